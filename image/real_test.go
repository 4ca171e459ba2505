package image

import (
	"context"
	"debug/elf"
	"github.com/cocoon-runtime/cocoon/internal/modindex"
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

	// The on-demand tree answers what the kernel asks for when a
	// privileged or NET_ADMIN container uses bridges, veth, vxlan, tun,
	// iptables, nftables, ipvs, xfs, loop or device mapper.
	b, err := os.ReadFile(filepath.Join(img.ModulesDir, modindex.FileName))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := modindex.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for req, want := range map[string]string{
		"rtnl-link-bridge": "bridge", "bridge": "bridge", "rtnl-link-veth": "veth", "rtnl-link-vxlan": "vxlan",
		"char-major-10-200": "tun", "nfnetlink-subsys-10": "nf_tables", "nft-chain-2-nat": "nft_chain_nat",
		"ip_tables": "ip_tables", "iptable_nat": "iptable_nat", "ipt_MASQUERADE": "xt_MASQUERADE",
		"ip_vs": "ip_vs", "fs-xfs": "xfs", "char-major-10-237": "loop", "block-major-7-0": "loop",
		"char-major-10-236": "dm_mod", "sch_htb": "sch_htb",
	} {
		order, err := ix.Resolve(req)
		if err != nil || !slices.Contains(order, want) {
			t.Errorf("on-demand tree: %s resolves to %v, %v; want %s", req, order, err, want)
			continue
		}
		for _, m := range order {
			if _, err := os.Stat(filepath.Join(img.ModulesDir, m+".ko")); err != nil {
				t.Errorf("on-demand tree: %v", err)
			}
		}
	}
	var treeSize int64
	ents, _ := os.ReadDir(img.ModulesDir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			treeSize += fi.Size()
		}
	}
	t.Logf("on-demand tree: %d modules, %.1f MB", len(ix.Modules), float64(treeSize)/1e6)

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
