package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A reply's size is bounded by ttrpc (4 MiB), but protobuf turns each
// element of a repeated field into its own allocation: 4 MiB of two-byte
// empty elements decode into two million structs, some 250 MiB. So the
// host counts the elements on the wire, before anything decodes them:
// the reply envelope as it arrives (replyGuard), and each method's reply
// message before ttrpc unmarshals it (boundReplies).

// Limits on the repeated-field elements of a reply, counted over the whole
// message, nested messages included.
const (
	// defaultMaxElements holds for every method not in methodMaxElements.
	defaultMaxElements = 1024
	// maxErrorDetails bounds the details of an error status.
	maxErrorDetails = 16
	// maxNesting bounds how deep the count descends into nested messages.
	maxNesting = 32
)

// methodMaxElements raises the limit for the methods whose replies are
// lists.
var methodMaxElements = map[protoreflect.Name]int{
	"ListProcesses":   maxProcesses,
	"GetGuestDetails": 2 * maxModules, // modules and block devices
	"ListInterfaces":  maxGuestInterfaces * (1 + maxGuestAddresses),
	"ListRoutes":      maxGuestRoutes,
	"UpdateRoutes":    maxGuestRoutes,
}

// replyDescriptors maps each agent method's full ttrpc path to its reply
// message and element limit.
func replyDescriptors() map[string]replyBound {
	out := map[string]replyBound{}
	svcs := protocol.File_agent_proto.Services()
	for i := range svcs.Len() {
		svc := svcs.Get(i)
		for j := range svc.Methods().Len() {
			m := svc.Methods().Get(j)
			limit, ok := methodMaxElements[m.Name()]
			if !ok {
				limit = defaultMaxElements
			}
			out["/"+string(svc.FullName())+"/"+string(m.Name())] = replyBound{m.Output(), limit}
		}
	}
	return out
}

type replyBound struct {
	desc  protoreflect.MessageDescriptor
	limit int
}

// boundReplies returns a ttrpc interceptor that refuses a reply whose
// repeated fields hold more elements than its method allows, before ttrpc
// decodes it.
func boundReplies(bounds map[string]replyBound) ttrpc.UnaryClientInterceptor {
	return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		if err := invoke(ctx, req, resp); err != nil {
			return err
		}
		b, ok := bounds[info.FullMethod]
		if !ok {
			return fmt.Errorf("%w: reply to unknown method %s", ErrProtocol, info.FullMethod)
		}
		if err := checkRepeated(resp.Payload, b.desc, b.limit); err != nil {
			resp.Payload = nil
			return fmt.Errorf("%w: %s reply: %w", ErrProtocol, info.FullMethod, err)
		}
		return nil
	}
}

// errTooManyElements is returned by checkRepeated for a message over its
// limit.
var errTooManyElements = errors.New("too many repeated elements")

// checkRepeated counts the elements of the repeated fields of the message
// md encoded in b, nested messages included, and fails once they pass
// limit or if b is malformed. Counting allocates nothing.
func checkRepeated(b []byte, md protoreflect.MessageDescriptor, limit int) error {
	n := 0
	if err := countRepeated(b, md, limit, &n, 0); err != nil {
		return err
	}
	return nil
}

func countRepeated(b []byte, md protoreflect.MessageDescriptor, limit int, n *int, depth int) error {
	if depth > maxNesting {
		return errors.New("messages nested too deep")
	}
	for len(b) > 0 {
		num, typ, tn := protowire.ConsumeTag(b)
		if tn < 0 {
			return fmt.Errorf("malformed message: %w", protowire.ParseError(tn))
		}
		b = b[tn:]
		vn := protowire.ConsumeFieldValue(num, typ, b)
		if vn < 0 {
			return fmt.Errorf("malformed message: %w", protowire.ParseError(vn))
		}
		v := b[:vn]
		b = b[vn:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue // kept as raw unknown bytes, not decoded
		}
		if fd.IsList() || fd.IsMap() {
			k := 1
			if typ == protowire.BytesType && packable(fd.Kind()) {
				var err error
				if k, err = countPacked(v, fd.Kind()); err != nil {
					return err
				}
			}
			if *n += k; *n > limit {
				return fmt.Errorf("%w: more than %d", errTooManyElements, limit)
			}
		}
		if typ == protowire.BytesType && (fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind) {
			inner, _ := protowire.ConsumeBytes(v)
			if err := countRepeated(inner, fd.Message(), limit, n, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// packable reports whether a repeated field of kind k may come packed.
func packable(k protoreflect.Kind) bool {
	switch k {
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind, protoreflect.GroupKind:
		return false
	}
	return true
}

// countPacked counts the elements of a packed repeated field of kind k
// whose length-prefixed value is v.
func countPacked(v []byte, k protoreflect.Kind) (int, error) {
	p, pn := protowire.ConsumeBytes(v)
	if pn < 0 {
		return 0, fmt.Errorf("malformed packed field: %w", protowire.ParseError(pn))
	}
	switch k {
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return len(p) / 4, nil
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return len(p) / 8, nil
	}
	n := 0
	for _, c := range p {
		if c < 0x80 { // each varint ends with one byte below 0x80
			n++
		}
	}
	return n, nil
}

// ttrpc's framing: a 10-byte header (length, stream, type, flags), the
// type of a reply, and the largest message ttrpc accepts.
const (
	ttrpcHeaderSize     = 10
	ttrpcTypeResponse   = 2
	ttrpcMaxMessageSize = 4 << 20
)

// responseDesc describes ttrpc's reply envelope.
var responseDesc = (&ttrpc.Response{}).ProtoReflect().Descriptor()

// replyGuard sits under the ttrpc client and checks each reply envelope
// before ttrpc decodes it: its error status may carry a repeated field of
// details. A reply over the bound fails the read, which ends the
// connection; the violation is kept for the caller to report.
type replyGuard struct {
	net.Conn
	frame []byte // the rest of a checked frame, to hand to ttrpc
	rest  int64  // bytes of an unchecked frame still to pass through

	mu        sync.Mutex
	violation error
}

func (g *replyGuard) Read(p []byte) (int, error) {
	if len(g.frame) == 0 && g.rest == 0 {
		if err := g.next(); err != nil {
			return 0, err
		}
	}
	if len(g.frame) > 0 {
		n := copy(p, g.frame)
		g.frame = g.frame[n:]
		return n, nil
	}
	if int64(len(p)) > g.rest {
		p = p[:g.rest]
	}
	n, err := g.Conn.Read(p)
	g.rest -= int64(n)
	return n, err
}

// next reads the next frame's header and, for a reply ttrpc would decode,
// the whole frame, and checks it.
func (g *replyGuard) next() error {
	var hdr [ttrpcHeaderSize]byte
	if _, err := io.ReadFull(g.Conn, hdr[:]); err != nil {
		return err
	}
	length := binary.BigEndian.Uint32(hdr[:4])
	if hdr[8] != ttrpcTypeResponse || length > ttrpcMaxMessageSize {
		// Not a reply, or one ttrpc discards unread.
		g.frame, g.rest = hdr[:], int64(length)
		return nil
	}
	frame := make([]byte, ttrpcHeaderSize+int(length))
	copy(frame, hdr[:])
	if _, err := io.ReadFull(g.Conn, frame[ttrpcHeaderSize:]); err != nil {
		return err
	}
	if err := checkRepeated(frame[ttrpcHeaderSize:], responseDesc, maxErrorDetails); err != nil {
		err = fmt.Errorf("%w: reply envelope: %w", ErrProtocol, err)
		g.mu.Lock()
		g.violation = err
		g.mu.Unlock()
		return err
	}
	g.frame = frame
	return nil
}

// err returns the violation that ended the connection, if any.
func (g *replyGuard) err() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.violation
}
