package container

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/guest/boot"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// vmEnv is set on the guest kernel's command line, which hands it to the
// test binary running as the guest's init.
const vmEnv = "COCOON_CONTAINER_TEST_VM"

// vmExitMarker precedes the exit code that the tests in the guest print
// before powering off.
const vmExitMarker = "COCOON-CONTAINER-TESTS-EXIT="

// vmTimeout bounds the guest test run, boot included.
const vmTimeout = 6 * time.Minute

// guestOnlyTests need the guest's pure cgroup v2 and must pass, not skip,
// in the VM.
func guestOnlyTests() []string { return []string{"TestMemoryLimitOOM", "TestUpdate"} }

// guestMain runs the tests as PID 1 of the guest booted by TestInGuestVM,
// set up as the agent sets up the guest, then powers off.
func guestMain(m *testing.M) {
	code := 1
	if err := boot.MountAll(); err != nil {
		fmt.Println("mounting the guest's filesystems:", err)
	} else if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		fmt.Println("mounting /tmp:", err)
	} else {
		os.Setenv(nsEnv, "1") // the harness's setup is done
		ctx, cancel := context.WithCancel(context.Background())
		go testReaper().Run(ctx)
		code = m.Run()
		cancel()
	}
	fmt.Printf("\n%s%d\n", vmExitMarker, code)
	if err := boot.PowerOff(); err != nil {
		fmt.Println(err)
	}
	os.Exit(code) // panics the guest kernel, which reboots: QEMU exits
}

// TestInGuestVM runs this package's tests again inside a VM booted from the
// Cocoon guest kernel, with the test binary as PID 1 of an initramfs, as
// the agent runs: cgroup v2 with every controller, no pivot_root out of the
// initramfs. It needs a guest image (make image); COCOON_REQUIRE_VM=1 makes
// its absence a failure.
func TestInGuestVM(t *testing.T) {
	if os.Getenv(vmEnv) != "" {
		t.Skip("already in the guest")
	}
	if os.Geteuid() != 0 || os.Getenv(nsEnv) == "" {
		t.Skip("needs root")
	}
	testutil.BootsVM(t)
	skip := func(format string, args ...any) {
		t.Helper()
		testutil.Unavailable(t, "VM", format, args...)
	}
	dataDir := os.Getenv("COCOON_DATA_DIR")
	if dataDir == "" {
		dataDir = layout.DataDir
	}
	img, err := image.Current(dataDir)
	if err != nil {
		skip("no guest kernel: %v", err)
	}
	// The test binary is the guest's init, with no agent to answer the
	// vm package: QEMU runs it directly, as the QEMU driver would.
	driver, err := drivers.Lookup("qemu")
	if err != nil {
		t.Fatal(err)
	}
	qemu, err := exec.LookPath(driver.Binary)
	if err != nil {
		skip("no QEMU: %v", err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		skip("no busybox: %v", err)
	}

	dir := t.TempDir()
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := writeTestInitramfs(initrd); err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, "console.log")
	// KVM can be present yet broken (nested); the driver's probe boots the
	// kernel to tell. The probe runs QEMU, a child this process would reap.
	testReaper().Lock()
	res, err := driver.ResolveAccel(context.Background(), hypervisor.AccelAuto, hypervisor.AccelProbe{Binary: qemu, Kernel: img.Kernel})
	testReaper().Unlock()
	if err != nil {
		t.Fatalf("choosing the accelerator: %v", err)
	}
	accelArg, cpu := "tcg", "qemu64"
	if res.Accelerator == hypervisor.AccelKVM {
		accelArg, cpu = "kvm", "host"
	}
	// Verbose, so that the guest-only tests can be seen to pass.
	args := []string{"-test.v", "-test.timeout=" + (vmTimeout - 30*time.Second).String()}
	cmdline := "console=ttyS0 panic=-1 reboot=t quiet " + vmEnv + "=1 -- " + strings.Join(args, " ")
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
		"-machine", "q35,smm=off,vmport=off,sata=off,usb=off,graphics=off",
		"-accel", accelArg, "-cpu", cpu, "-smp", "2", "-m", "1024M",
		"-kernel", img.Kernel, "-initrd", initrd, "-append", cmdline,
		"-serial", "file:"+console,
	)
	var qemuOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	// This process reaps its children: hold the reaper off while os/exec
	// waits for QEMU.
	testReaper().Lock()
	start := time.Now()
	runErr := cmd.Run()
	testReaper().Unlock()
	out, err := os.ReadFile(console)
	if err != nil {
		t.Fatalf("QEMU (%v): %v; console: %v", runErr, qemuOut.String(), err)
	}
	t.Logf("guest (%s: %s) ran for %v", accelArg, res.Reason, time.Since(start).Round(time.Millisecond))

	code := -1
	var results []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimRight(line, "\r")
		if v, ok := strings.CutPrefix(line, vmExitMarker); ok {
			code, _ = strconv.Atoi(v)
		}
		if strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "    ") {
			results = append(results, line)
		}
	}
	t.Logf("results in the guest:\n%s", strings.Join(results, "\n"))
	if code != 0 {
		t.Fatalf("tests in the guest exited with %d (QEMU: %v %s); console:\n%s", code, runErr, qemuOut.String(), out)
	}
	for _, name := range guestOnlyTests() {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
}

// writeTestInitramfs writes a newc initramfs holding the running test
// binary as /init, the shared libraries it needs, and busybox.
func writeTestInitramfs(name string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &newcWriter{w: f}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "run", "lib", "lib64", "usr", "usr/lib"} {
		w.add(d, unix.S_IFDIR|0o755, nil, 0)
	}
	w.add("dev/console", unix.S_IFCHR|0o600, nil, unix.Mkdev(5, 1))
	w.add("dev/null", unix.S_IFCHR|0o666, nil, unix.Mkdev(1, 3))
	if err := w.addFile("init", exe); err != nil {
		return err
	}
	if err := w.addFile("bin/busybox", "/bin/busybox"); err != nil {
		return err
	}
	libs, err := sharedLibraries(exe)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		for d := path.Dir(lib); d != "/"; d = path.Dir(d) {
			w.add(strings.TrimPrefix(d, "/"), unix.S_IFDIR|0o755, nil, 0)
		}
		if err := w.addFile(strings.TrimPrefix(lib, "/"), lib); err != nil {
			return err
		}
	}
	return w.close()
}

// sharedLibraries returns the dynamic loader and shared libraries that the
// executable exe needs, transitively.
func sharedLibraries(exe string) ([]string, error) {
	dirs := []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}
	seen := make(map[string]bool)
	var out []string
	queue := []string{exe}
	for len(queue) > 0 {
		file := queue[0]
		queue = queue[1:]
		ef, err := elf.Open(file)
		if err != nil {
			return nil, err
		}
		for _, p := range ef.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b, err := io.ReadAll(p.Open())
			if err != nil {
				ef.Close()
				return nil, err
			}
			if interp := string(bytes.TrimRight(b, "\x00")); !seen[interp] {
				seen[interp] = true
				out = append(out, interp)
			}
		}
		names, err := ef.ImportedLibraries()
		ef.Close()
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			found := ""
			for _, d := range dirs {
				if _, err := os.Stat(filepath.Join(d, n)); err == nil {
					found = filepath.Join(d, n)
					break
				}
			}
			if found == "" {
				return nil, fmt.Errorf("shared library %s of %s not found", n, file)
			}
			if !seen[found] {
				seen[found] = true
				out = append(out, found)
				queue = append(queue, found)
			}
		}
	}
	return out, nil
}

// newcWriter writes a cpio archive in the newc format the kernel unpacks.
type newcWriter struct {
	w    io.Writer
	ino  int
	n    int64
	err  error
	dirs map[string]bool
}

// add writes one entry; directories are written once.
func (cw *newcWriter) add(name string, mode uint32, data []byte, rdev uint64) {
	if mode&unix.S_IFMT == unix.S_IFDIR {
		if cw.dirs == nil {
			cw.dirs = make(map[string]bool)
		}
		if cw.dirs[name] {
			return
		}
		cw.dirs[name] = true
	}
	cw.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		cw.ino, mode, 0, 0, 1, 0, len(data), 0, 0, unix.Major(rdev), unix.Minor(rdev), len(name)+1, 0)
	cw.write([]byte(hdr + name + "\x00"))
	cw.write(data)
}

// addFile adds the regular file src, following symbolic links, as name.
func (cw *newcWriter) addFile(name, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	cw.add(name, unix.S_IFREG|0o755, data, 0)
	return cw.err
}

// write writes b and pads to a multiple of four bytes.
func (cw *newcWriter) write(b []byte) {
	if cw.err != nil {
		return
	}
	var n int
	n, cw.err = cw.w.Write(b)
	cw.n += int64(n)
	if pad := (4 - cw.n%4) % 4; pad > 0 && cw.err == nil {
		n, cw.err = cw.w.Write(make([]byte, pad))
		cw.n += int64(n)
	}
}

// close writes the trailer.
func (cw *newcWriter) close() error {
	cw.add("TRAILER!!!", 0, nil, 0)
	if cw.err != nil {
		return errors.Join(errors.New("write initramfs"), cw.err)
	}
	return nil
}
