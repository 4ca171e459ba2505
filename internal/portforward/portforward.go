// Package portforward makes a pod's localhost reachable from its network
// namespace on the host, where containerd's CRI serves kubectl
// port-forward: it dials localhost:<port> in the pod's netns, which for a
// VM runtime is not where the pod's processes listen.
//
// In the netns, an nftables table redirects every TCP connection made to
// 127.0.0.1 or ::1 (locally, on the output hook) to a listener of the
// forwarder; the listener learns the port asked for from conntrack
// (SO_ORIGINAL_DST) and carries the connection to that port on the
// guest's loopback over the agent channel. Nothing else in the netns is
// touched: the table has one chain, for locally made connections to the
// loopback addresses only, and goes when the forwarder closes (or with the
// netns). The forwarder never dials anything on the host: whatever the
// guest answers, a connection ends in the guest or is reset.
package portforward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/network"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) the forwarder adds to
// the netns.
const TableName = "cocoon-portforward"

// MaxConns bounds the connections forwarded at once; more are reset.
const MaxConns = 256

// dialTimeout bounds the wait for the guest to connect a forwarded
// connection.
const dialTimeout = 10 * time.Second

// Guest connects to a port on the guest's loopback, family
// (protocol.PortIPv4 or PortIPv6) first.
type Guest interface {
	DialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error)
}

// Forwarder serves one netns. Close stops it.
type Forwarder struct {
	netns     string
	relay     *relay
	listeners []*net.TCPListener
	accepting sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start serves the netns at path: from now on, a connection to 127.0.0.1
// or ::1 there reaches the same port in guest. IPv6 is served when the
// netns's loopback has ::1. On error nothing is left in the netns.
func Start(path string, guest Guest, log *slog.Logger) (*Forwarder, error) {
	var v4, v6 *net.TCPListener
	err := network.Do(path, func() error {
		var err error
		v4, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
		// No ::1 (IPv6 off in the netns) leaves IPv6 out.
		v6, _ = net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("port forward in %s: %w", path, err)
	}
	f := &Forwarder{netns: path, relay: newRelay(guest, log), listeners: []*net.TCPListener{v4}}
	redirects := []redirect{{family: protocol.PortIPv4, to: uint16(v4.Addr().(*net.TCPAddr).Port)}}
	if v6 != nil {
		f.listeners = append(f.listeners, v6)
		redirects = append(redirects, redirect{family: protocol.PortIPv6, to: uint16(v6.Addr().(*net.TCPAddr).Port)})
	}
	if err := setTable(path, redirects); err != nil {
		for _, l := range f.listeners {
			l.Close()
		}
		return nil, fmt.Errorf("port forward in %s: %w", path, err)
	}
	for i, l := range f.listeners {
		family := redirects[i].family
		f.accepting.Add(1)
		go func() {
			defer f.accepting.Done()
			if err := f.relay.accept(l, family, func(c *net.TCPConn) (uint16, error) { return originalPort(c, family) }); err != nil {
				log.Warn("port forward: accept", "error", err)
			}
		}()
	}
	return f, nil
}

// Close stops the forwarder: its listeners and table go, and every
// connection it carries is reset. It waits until they ended.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		for _, l := range f.listeners {
			l.Close()
		}
		f.accepting.Wait()
		f.relay.stop()
		// A netns already gone took the table with it.
		if err := delTable(f.netns); err != nil && !errors.Is(err, os.ErrNotExist) {
			f.closeErr = fmt.Errorf("port forward in %s: %w", f.netns, err)
		}
	})
	return f.closeErr
}

// Serve carries every connection l accepts to port on the guest's
// loopback, until ctx is done (nil) or l fails (its error); then l is
// closed and the connections in flight are reset.
func Serve(ctx context.Context, l *net.TCPListener, guest Guest, port uint16, log *slog.Logger) error {
	r := newRelay(guest, log)
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	err := r.accept(l, protocol.PortIPv4, func(*net.TCPConn) (uint16, error) { return port, nil })
	l.Close()
	r.stop()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// relay carries accepted connections into the guest: at most MaxConns at
// once, each tracked so that stop resets it.
type relay struct {
	guest  Guest
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.TCPConn]struct{}
}

func newRelay(guest Guest, log *slog.Logger) *relay {
	ctx, cancel := context.WithCancel(context.Background())
	return &relay{guest: guest, log: log, ctx: ctx, cancel: cancel, slots: make(chan struct{}, MaxConns), conns: map[*net.TCPConn]struct{}{}}
}

// accept serves l until it fails, carrying each connection to the guest
// port that port names for it, family first. A closed l is no error.
func (r *relay) accept(l *net.TCPListener, family byte, port func(*net.TCPConn) (uint16, error)) error {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		select {
		case r.slots <- struct{}{}:
		default:
			r.log.Warn("port forward: too many connections, resetting one", "max", MaxConns)
			reset(c)
			continue
		}
		if !r.track(c) {
			<-r.slots
			reset(c)
			return nil
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() { <-r.slots }()
			defer r.untrack(c)
			r.forward(c, family, port)
		}()
	}
}

// stop resets every connection in flight, takes no more, and waits until
// they ended.
func (r *relay) stop() {
	r.mu.Lock()
	r.cancel()
	for c := range r.conns {
		reset(c)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// track records c, unless the relay is stopping.
func (r *relay) track(c *net.TCPConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx.Err() != nil {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c *net.TCPConn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// forward carries c to its guest port.
func (r *relay) forward(c *net.TCPConn, family byte, port func(*net.TCPConn) (uint16, error)) {
	p, err := port(c)
	if err != nil {
		r.log.Warn("port forward: no destination port", "error", err)
		reset(c)
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, dialTimeout)
	s, err := r.guest.DialPort(ctx, family, p)
	cancel()
	if err != nil {
		// A refusal in the guest is a refusal here: the client sees its
		// connection reset at once.
		r.log.Debug("port forward: guest did not connect", "port", p, "error", err)
		reset(c)
		return
	}
	protocol.SplicePort(c, s)
}

// reset closes c with a RST.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// soOriginalDst is SO_ORIGINAL_DST, and IP6T_SO_ORIGINAL_DST, the same
// number at the IPv6 level.
const soOriginalDst = unix.SO_ORIGINAL_DST

// originalPort asks conntrack for the port c was made to before the
// redirect. Only a connection to a loopback address is accepted.
func originalPort(c *net.TCPConn, family byte) (uint16, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var dst netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		if family == protocol.PortIPv4 {
			// sockaddr_in in the first 16 bytes.
			m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
			if err != nil {
				serr = err
				return
			}
			b := m.Multiaddr
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			return
		}
		// sockaddr_in6 in the first 28 bytes.
		info, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst)
		if err != nil {
			serr = err
			return
		}
		// The port field holds network byte order.
		var p [2]byte
		binary.NativeEndian.PutUint16(p[:], info.Addr.Port)
		dst = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), binary.BigEndian.Uint16(p[:]))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("SO_ORIGINAL_DST: %w", err)
	}
	if !dst.Addr().IsLoopback() || dst.Port() == 0 {
		return 0, fmt.Errorf("SO_ORIGINAL_DST: %s is not a loopback port", dst)
	}
	return dst.Port(), nil
}

// redirect is one family's rule: its loopback's TCP to port to.
type redirect struct {
	family byte
	to     uint16
}

// nftConn opens an nftables connection to the netns at path.
func nftConn(path string) (*nftables.Conn, func(), error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open network namespace: %w", err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("nftables: %w", err)
	}
	return c, func() { h.Close() }, nil
}

// setTable (re)makes the forwarder's table in the netns at path, in one
// transaction.
func setTable(path string, redirects []redirect) error {
	// A table left by an earlier forwarder of this netns (a killed shim)
	// is replaced.
	if err := delTable(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	c, done, err := nftConn(path)
	if err != nil {
		return err
	}
	defer done()
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &policy,
	})
	for _, r := range redirects {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: redirectExprs(r)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: add table %s: %w", TableName, err)
	}
	return nil
}

// redirectExprs is `meta nfproto F meta l4proto tcp ip[6] daddr LOOPBACK
// redirect to :PORT`.
func redirectExprs(r redirect) []expr.Any {
	proto, daddr, offset := byte(unix.NFPROTO_IPV4), []byte{127, 0, 0, 1}, uint32(16)
	if r.family == protocol.PortIPv6 {
		lo := netip.IPv6Loopback().As16()
		proto, daddr, offset = unix.NFPROTO_IPV6, lo[:], 24
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(daddr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: daddr},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.to)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// delTable removes the forwarder's table from the netns at path; a table,
// or netns, that is not there is os.ErrNotExist.
func delTable(path string) error {
	c, done, err := nftConn(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return os.ErrNotExist
		}
		return err
	}
	defer done()
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return os.ErrNotExist
		}
		return fmt.Errorf("nftables: delete table %s: %w", TableName, err)
	}
	return nil
}

// Installed reports whether the netns at path holds the forwarder's
// table: a leak check for tests and tools.
func Installed(path string) (bool, error) {
	c, done, err := nftConn(path)
	if err != nil {
		return false, err
	}
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}
