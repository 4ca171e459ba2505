package image

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestBuildDebianKernel builds an image from Debian's real cloud kernel,
// downloaded with apt, and a small static Go program standing in for the
// agent.
func TestBuildDebianKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads and unpacks a kernel package")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for apt-get download")
	}
	for _, tool := range []string{"dpkg-deb", "apt-get", "apt-cache", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// A trivial static agent.
	src := filepath.Join(dir, "agent")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module agent\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() { println(\"agent\") }\n"), 0o644)
	agent := filepath.Join(dir, "cocoon-agent")
	build := exec.CommandContext(ctx, "go", "build", "-o", agent, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOOS=linux", "GOARCH=amd64", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}

	data := filepath.Join(dir, "data")
	rec := &recorder{}
	start := time.Now()
	img, err := Build(ctx, BuildOptions{DataDir: data, AgentPath: agent, Progress: func(format string, args ...any) {
		rec.progress(format, args...)
		t.Logf(format, args...)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold build %v: %+v", time.Since(start), img)

	f, err := elf.Open(img.Kernel)
	if err != nil {
		t.Fatalf("vmlinux is not an ELF file: %v", err)
	}
	pvh, err := hasPVHNote(f)
	f.Close()
	if err != nil || !pvh {
		t.Errorf("vmlinux has no PVH entry note: %v", err)
	}
	for _, m := range wantDefaultOrder {
		if !slices.Contains(img.Modules, m) {
			t.Errorf("module %s missing from %v", m, img.Modules)
		}
	}
	archive, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, m := range readNewc(t, archive) {
		found[m.Name] = true
	}
	for _, m := range img.Modules {
		if p := "lib/modules/" + img.KernelRelease + "/" + m + ".ko"; !found[p] {
			t.Errorf("no %s in initramfs", p)
		}
	}
	if !found["init"] || !found["dev/console"] {
		t.Error("initramfs lacks /init or /dev/console")
	}

	// Second build: nothing to do.
	before, _ := os.Stat(img.Kernel)
	rec = &recorder{}
	start = time.Now()
	again, err := Build(ctx, BuildOptions{DataDir: data, AgentPath: agent, Progress: rec.progress})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("warm build %v", time.Since(start))
	after, _ := os.Stat(img.Kernel)
	if again.ID != img.ID || !rec.has("up to date") || rec.has("downloading") || !os.SameFile(before, after) {
		t.Errorf("second build was not a no-op: %q", rec.msgs)
	}
}
