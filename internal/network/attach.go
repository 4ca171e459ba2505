package network

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RecordOf is the record of wiring eps in the netns at path.
func RecordOf(path string, eps []Endpoint) Record {
	r := Record{NetNS: path}
	for _, e := range eps {
		r.Endpoints = append(r.Endpoints, RecordEndpoint{Link: e.Link, Model: e.Model, Tap: e.Tap, MAC: e.Interface.MAC.String()})
	}
	return r
}

// Attach wires each endpoint in the netns at path and returns the files
// of the taps the VM's NICs are to be on, in the order of eps, one a
// queue pair (up to queues, for the taps and macvtaps Cocoon makes):
//   - ModelTCFilter: a new tap (non-persistent, so that the kernel removes
//     it when the last file on it closes — the VMM's) with the
//     interface's MTU, and the ingress qdiscs and redirect filters;
//   - ModelMacvtap: a new macvtap in passthru mode on the interface, with
//     its MAC and MTU;
//   - ModelNone: the interface itself, a tap or macvtap, opened (one
//     queue: it may not be multi-queue).
//
// On error it removes what it made and closes every file.
func Attach(path string, eps []Endpoint, queues int) (_ [][]*os.File, err error) {
	h, closeNS, err := handleAt(path)
	if err != nil {
		return nil, err
	}
	defer closeNS()
	var files [][]*os.File
	defer func() {
		if err != nil {
			CloseAll(files)
			Remove(RecordOf(path, eps))
		}
	}()
	for _, e := range eps {
		f, err := attach(h, path, e, max(queues, 1))
		if err != nil {
			return nil, fmt.Errorf("network namespace %s: %w", path, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// CloseAll closes every file of files.
func CloseAll(files [][]*os.File) {
	for _, fs := range files {
		for _, f := range fs {
			f.Close()
		}
	}
}

func attach(h *netlink.Handle, path string, e Endpoint, queues int) ([]*os.File, error) {
	switch {
	case e.Model == ModelTCFilter:
		files, err := openTap(path, e.Tap, queues)
		if err != nil {
			return nil, err
		}
		if err := wire(h, e); err != nil {
			CloseAll([][]*os.File{files})
			return nil, err
		}
		return files, nil
	case e.Model == ModelMacvtap:
		link, err := h.LinkByName(e.Link)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", e.Link, err)
		}
		// NewLinkAttrs, not a literal: a zero TxQLen would make the
		// macvtap's queues rings of no entries, which drop every frame.
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.ParentIndex, attrs.MTU, attrs.HardwareAddr = e.Tap, link.Attrs().Index, link.Attrs().MTU, link.Attrs().HardwareAddr
		attrs.NumTxQueues, attrs.NumRxQueues = queues, queues
		mv := &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_PASSTHRU}}
		if err := h.LinkAdd(mv); err != nil {
			return nil, fmt.Errorf("macvtap %s on %s: %w", e.Tap, e.Link, err)
		}
		if err := h.LinkSetUp(mv); err != nil {
			return nil, fmt.Errorf("macvtap %s: set up: %w", e.Tap, err)
		}
		return openMacvtap(h, path, e.Tap, queues)
	case e.Kind == "macvtap":
		return openMacvtap(h, path, e.Link, 1)
	case e.Kind == "tuntap":
		f, err := OpenGivenTap(path, e.Link)
		if err != nil {
			return nil, err
		}
		return []*os.File{f}, nil
	}
	return nil, fmt.Errorf("interface %s: a %s cannot be wired with model %q", e.Link, e.Kind, e.Model)
}

func wire(h *netlink.Handle, e Endpoint) error {
	link, err := h.LinkByName(e.Link)
	if err != nil {
		return fmt.Errorf("interface %s: %w", e.Link, err)
	}
	tap, err := h.LinkByName(e.Tap)
	if err != nil {
		return fmt.Errorf("tap %s: %w", e.Tap, err)
	}
	if err := h.LinkSetMTU(tap, link.Attrs().MTU); err != nil {
		return fmt.Errorf("tap %s: mtu %d: %w", e.Tap, link.Attrs().MTU, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("tap %s: set up: %w", e.Tap, err)
	}
	for _, pair := range [][2]netlink.Link{{link, tap}, {tap, link}} {
		if err := redirect(h, pair[0], pair[1]); err != nil {
			return err
		}
	}
	return nil
}

// ingressHandle is the handle of an ingress qdisc, netlink.MakeHandle(0xffff, 0).
const ingressHandle uint32 = 0xffff << 16

// redirect adds an ingress qdisc on from and a filter redirecting every
// frame it receives out of to.
func redirect(h *netlink.Handle, from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("interface %s: add ingress qdisc: %w", from.Attrs().Name, err)
	}
	// u32 with no keys matches every frame (this host's kernel has neither
	// matchall nor flower).
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("interface %s: add redirect filter to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// Remove undoes what Attach made for rec: for ModelTCFilter the tap (gone
// already once its files closed, unless a file is still open) and the
// ingress qdisc on the interface, which takes its filter with it; for
// ModelMacvtap the macvtap. What another made (ModelNone) stays. A netns
// that no longer exists has nothing left in it.
func Remove(rec Record) error {
	if rec.NetNS == "" || len(rec.Endpoints) == 0 {
		return nil
	}
	h, closeNS, err := handleAt(rec.NetNS)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer closeNS()
	var errs []error
	for _, e := range rec.Endpoints {
		if e.Model == ModelNone {
			continue
		}
		if l, err := h.LinkByName(e.Tap); err == nil {
			if err := h.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("remove %s %s: %w", l.Type(), e.Tap, err))
			}
		}
		if e.Model != ModelTCFilter {
			continue
		}
		if l, err := h.LinkByName(e.Link); err == nil {
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
			if err := h.QdiscDel(q); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("remove ingress qdisc of %s: %w", e.Link, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("network namespace %s: %w", rec.NetNS, errors.Join(errs...))
	}
	return nil
}

func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV)
}
