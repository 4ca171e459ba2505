package vm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"github.com/cocoon-runtime/cocoon/internal/vm"
)

// TestMain lets a test re-run this binary as a separate host process that
// re-attaches to a VM (see reattachHelper).
func TestMain(m *testing.M) {
	if spec := os.Getenv("COCOON_TEST_REATTACH"); spec != "" {
		os.Exit(reattachHelper(spec))
	}
	os.Exit(m.Run())
}

// reattachHelper opens the VM named by spec ("stateDir:id"), prints its
// guest kernel release and leaves the VM running.
func reattachHelper(spec string) int {
	dir, id, _ := strings.Cut(spec, ":")
	ctx := context.Background()
	v, err := vm.Open(ctx, dir, id, vm.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer v.Close()
	d, err := v.Agent.GuestDetails(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("kernel=%s pid=%d\n", d.KernelRelease, os.Getpid())
	return 0
}

func TestReattachFromAnotherProcess(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	v, err := vm.Start(ctx, id, env.Config(), env.Options())
	if err != nil {
		t.Fatal(err)
	}
	env.Cleanup(t, id)
	pids := v.HV.PIDs()
	// Other processes get in while this one keeps its connection, one after
	// the other (each frees its port when it exits).
	for i := 0; i < 3; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "COCOON_TEST_REATTACH="+env.StateDir+":"+id)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper process %d: %v\n%s", i, err, out)
		}
		if !strings.Contains(string(out), "kernel=6.") {
			t.Fatalf("helper process %d printed %q", i, out)
		}
	}
	if err := v.Agent.Check(ctx); err != nil {
		t.Fatalf("first connection after the others: %v", err)
	}
	// The starting process goes away (as `cocoon vm start` does), and can
	// come back, then stop the VM.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v2, err := vm.Open(ctx, env.StateDir, id, env.Options())
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
}

func TestQEMUKilled(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	v, err := vm.Start(ctx, id, env.Config(), env.Options())
	if err != nil {
		t.Fatal(err)
	}
	env.Cleanup(t, id)
	pids := v.HV.PIDs()
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.HV.Wait():
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not report the killed VM")
	}
	// A call on the dead guest fails with a clear, typed error, quickly.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := v.Agent.Check(cctx); !errors.Is(err, agent.ErrGuestDied) {
		t.Fatalf("Check on killed VM = %v, want ErrGuestDied", err)
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
}

func TestQEMUKilledThenStoppedFromAnotherProcess(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	v, err := vm.Start(ctx, id, env.Config(), env.Options())
	if err != nil {
		t.Fatal(err)
	}
	env.Cleanup(t, id)
	pids := v.HV.PIDs()
	v.Close()
	syscall.Kill(pids[0], syscall.SIGKILL)
	testutil.WaitGone(ctx, pids[0])

	v2, err := vm.Open(ctx, env.StateDir, id, env.Options())
	if !errors.Is(err, agent.ErrGuestDied) {
		t.Fatalf("Open of a dead VM = %v, want ErrGuestDied", err)
	}
	if err := v2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
}

func TestBadInput(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	cases := []struct {
		name  string
		edit  func(*hypervisor.Config)
		field string
	}{
		{"missing kernel", func(c *hypervisor.Config) { c.Kernel = "/nonexistent/vmlinux" }, "kernel"},
		{"missing initrd", func(c *hypervisor.Config) { c.Initrd = "/nonexistent/initrd" }, "initrd"},
		{"kernel is a directory", func(c *hypervisor.Config) { c.Kernel = "/tmp" }, "kernel"},
		{"missing qemu", func(c *hypervisor.Config) { c.Path = "/nonexistent/qemu-system-x86_64" }, "hypervisor path"},
		{"unknown machine", func(c *hypervisor.Config) { c.MachineType = "pc-i440fx" }, "machine type"},
		{"unknown accelerator", func(c *hypervisor.Config) { c.Accelerator = "hvf" }, "accelerator"},
		{"too little memory", func(c *hypervisor.Config) { c.MemoryMiB = 16 }, "memory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := env.Config()
			c.edit(&cfg)
			id := testutil.UniqueID(t)
			_, err := vm.Start(ctx, id, cfg, env.Options())
			var ce *hypervisor.ConfigError
			if !errors.As(err, &ce) || ce.Field != c.field {
				t.Fatalf("Start = %v, want a config error on %q", err, c.field)
			}
			t.Log(err)
			testutil.AssertNoLeaks(t, env, id, nil)
		})
	}
	for _, id := range []string{"../x", "a/b", "", ".hidden", strings.Repeat("a", 65)} {
		if _, err := vm.Start(ctx, id, env.Config(), env.Options()); err == nil {
			t.Errorf("Start accepted id %q", id)
		}
	}
	entries, _ := os.ReadDir(env.StateDir)
	if len(entries) != 0 {
		t.Fatalf("state left behind: %v", entries)
	}
}

// TestGuestNeverAnswers boots an initramfs whose init never starts the
// agent: Start must give up after its boot timeout with a typed error and
// leave nothing behind.
func TestGuestNeverAnswers(t *testing.T) {
	env := testutil.NeedVM(t)
	initrd := busyboxInitrd(t, "echo silent guest up\nexec /bin/busybox sleep 1000")
	cfg := env.Config()
	cfg.Initrd = initrd
	opts := env.Options()
	opts.BootTimeout = 4 * time.Second
	id := testutil.UniqueID(t)
	env.Cleanup(t, id)
	_, err := vm.Start(context.Background(), id, cfg, opts)
	var be *vm.BootError
	if !errors.As(err, &be) || !errors.Is(err, agent.ErrTimeout) {
		t.Fatalf("Start = %v, want a BootError wrapping agent.ErrTimeout", err)
	}
	t.Log(err)
	testutil.AssertNoLeaks(t, env, id, nil)
}

// TestForcedKVM forces the KVM accelerator. Where KVM really works the VM
// boots; on hosts with an emulating nested KVM (like this project's CI) the
// guest crashes, and Start must say so clearly and clean up.
func TestForcedKVM(t *testing.T) {
	env := testutil.NeedVM(t)
	cfg := env.Config()
	cfg.Accelerator = hypervisor.AccelKVM
	opts := env.Options()
	opts.BootTimeout = 8 * time.Second
	id := testutil.UniqueID(t)
	env.Cleanup(t, id)
	v, err := vm.Start(context.Background(), id, cfg, opts)
	if err == nil {
		t.Log("KVM works on this host")
		pids := v.HV.PIDs()
		if err := v.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		testutil.AssertNoLeaks(t, env, id, pids)
		return
	}
	t.Logf("forced KVM: %v", err)
	var ce *hypervisor.ConfigError
	var be *vm.BootError
	switch {
	case errors.As(err, &be):
		if !strings.Contains(be.Hint, "tcg") {
			t.Fatalf("boot error under forced KVM gives no hint: %v", err)
		}
	case errors.As(err, &ce):
	default:
		t.Fatalf("forced KVM failed with an untyped error: %v", err)
	}
	testutil.AssertNoLeaks(t, env, id, nil)
}

// TestBlockHotplug adds a disk to a running VM and removes it again; the
// guest must see it come and go.
func TestBlockHotplug(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	cfg := env.Config()
	cfg.HotplugSlots = 2
	id := testutil.UniqueID(t)
	v, err := vm.Start(ctx, id, cfg, env.Options())
	if err != nil {
		t.Fatal(err)
	}
	env.Cleanup(t, id)
	if caps := v.HV.Capabilities(ctx); !caps.BlockHotplug {
		t.Fatalf("capabilities %+v lack block hotplug", caps)
	}
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: "disk0", Path: disk}
	if err := v.HV.AddDevice(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if err := v.HV.AddDevice(ctx, dev); err == nil {
		t.Fatal("adding the same device twice succeeded")
	}
	waitDisks := func(want int) []string {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			d, err := v.Agent.GuestDetails(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(d.BlockDevices) == want {
				return d.BlockDevices
			}
			if time.Now().After(deadline) {
				t.Fatalf("guest sees disks %v, want %d", d.BlockDevices, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if disks := waitDisks(1); disks[0] != "vda" {
		t.Fatalf("guest disks %v", disks)
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := v.HV.RemoveDevice(rctx, dev); err != nil {
		t.Fatal(err)
	}
	waitDisks(0)
	pids := v.HV.PIDs()
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
}

// TestRapidReattach opens and closes connections back to back, as a burst
// of CLI commands does: every one must get through, although each may land
// on a port whose previous session the guest has not yet seen end.
func TestRapidReattach(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	v, err := vm.Start(ctx, id, env.Config(), env.Options())
	if err != nil {
		t.Fatal(err)
	}
	env.Cleanup(t, id)
	v.Close()
	for i := 0; i < 20; i++ {
		v2, err := vm.Open(ctx, env.StateDir, id, env.Options())
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if err := v2.Agent.Check(ctx); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
		v2.Close()
	}
	v3, err := vm.Open(ctx, env.StateDir, id, env.Options())
	if err != nil {
		t.Fatal(err)
	}
	pids := v3.HV.PIDs()
	if err := v3.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
}

// TestConsoleFloodIsBounded boots a guest whose init writes to its serial
// console without end: the host keeps at most the console's cap, QEMU keeps
// working, and cleanup leaves no mount behind.
func TestConsoleFloodIsBounded(t *testing.T) {
	env := testutil.NeedVM(t)
	initrd := busyboxInitrd(t, "/bin/busybox mount -t devtmpfs dev /dev\nexec /bin/busybox yes flooding-the-console-flooding-the-console > /dev/ttyS0")
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Accelerator = hypervisor.AccelTCG
	id := testutil.UniqueID(t)
	env.Cleanup(t, id)
	ctx := context.Background()
	drv, err := drivers.Lookup("")
	if err != nil {
		t.Fatal(err)
	}
	hv := drv.New(drivers.Options{CacheDir: env.CacheDir})
	if err := hv.CreateVM(ctx, id, cfg); err != nil {
		t.Fatal(err)
	}
	if err := hv.StartVM(ctx); err != nil {
		t.Fatal(err)
	}
	pids := hv.PIDs()
	console := filepath.Join(env.StateDir, id, "console", "console.log")
	var size int64
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if st, err := os.Stat(console); err == nil {
			size = st.Size()
		}
		if size >= 1<<20-64<<10 {
			break
		}
	}
	if size < 1<<20-64<<10 || size > 1<<20 {
		t.Fatalf("console is %d bytes: want it filled up to the 1 MiB cap", size)
	}
	time.Sleep(time.Second)
	if st, _ := os.Stat(console); st.Size() > 1<<20 {
		t.Fatalf("console grew past the cap: %d bytes", st.Size())
	}
	if st, err := hv.Status(ctx); err != nil || st != "running" {
		t.Fatalf("QEMU after the flood: %q, %v", st, err)
	}
	if err := hv.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
	if m := testutil.MountsUnder(env.StateDir); len(m) > 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

// busyboxInitrd builds an initramfs whose /init is a busybox shell script
// running script: a guest without our agent.
func busyboxInitrd(t *testing.T, script string) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox-static")
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "dev"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755)
	os.WriteFile(filepath.Join(root, "init"), []byte("#!/bin/busybox sh\n"+script+"\n"), 0o755)
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	mk := exec.Command("sh", "-c", "find . | cpio -o -H newc > "+initrd)
	mk.Dir = root
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	return initrd
}
