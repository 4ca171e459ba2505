package accel

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// KVM ioctls (linux/kvm.h): _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

// checkKVMDevice runs the cheap checks on the KVM device at path: it exists,
// is a character device, opens read-write, speaks API version 12 and lets us
// create a VM. A failure is an *UnusableError saying what to do.
func checkKVMDevice(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return &UnusableError{
				Reason: path + " does not exist: load the kvm_intel or kvm_amd module and enable VT-x/AMD-V in the firmware (or pass it through to this VM)",
				Err:    err,
			}
		}
		return &UnusableError{Reason: "cannot stat " + path, Err: err}
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return &UnusableError{Reason: path + " is not a character device"}
	}

	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return &UnusableError{
				Reason: "permission denied opening " + path + ": run as root or join the group that owns it (usually kvm)",
				Err:    &os.PathError{Op: "open", Path: path, Err: err},
			}
		}
		return &UnusableError{Reason: "cannot open " + path, Err: &os.PathError{Op: "open", Path: path, Err: err}}
	}
	defer unix.Close(fd)

	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil {
		return &UnusableError{Reason: "KVM_GET_API_VERSION on " + path + " failed", Err: err}
	}
	if v != kvmAPIVersion {
		return &UnusableError{Reason: fmt.Sprintf("%s reports KVM API version %d, want %d", path, v, kvmAPIVersion)}
	}

	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	if err != nil {
		reason := "KVM_CREATE_VM on " + path + " failed"
		if errors.Is(err, unix.EBUSY) {
			reason += " (another hypervisor may own the virtualization extensions)"
		}
		return &UnusableError{Reason: reason, Err: err}
	}
	unix.Close(vm)
	return nil
}
