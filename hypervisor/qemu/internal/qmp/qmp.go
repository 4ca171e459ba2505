// Package qmp is a small typed client for the QEMU Machine Protocol.
//
// A Client speaks QMP over one connection (usually a unix socket created
// with -chardev socket,...,server=on + -mon mode=control). Commands may be
// issued concurrently; replies are matched to commands by id. Asynchronous
// events are delivered on the channel returned by Events.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxLine bounds one QMP message. QEMU's replies are small; a larger line
// means a broken peer.
const maxLine = 4 << 20

// Error is an error reported by QEMU for one command.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

// ErrClosed is returned for commands issued on, or interrupted by, a closed
// connection (for example because QEMU exited).
var ErrClosed = errors.New("qmp: connection closed")

// Event is an asynchronous QMP event.
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Version is QEMU's version as announced in the greeting.
type Version struct {
	Major, Minor, Micro int
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

type response struct {
	ID     string          `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
}

// Client is a QMP connection.
type Client struct {
	conn    net.Conn
	version Version

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan response
	err     error // set once the reader stops

	events chan Event
	done   chan struct{}
}

// Dial connects to the QMP socket at path, reads the greeting and leaves
// capabilities negotiation mode. It retries until ctx is done while the
// socket does not exist yet or refuses connections.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c, err := newClient(ctx, conn)
			if err != nil {
				conn.Close()
				return nil, err
			}
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: dial %s: %w", path, errors.Join(ctx.Err(), err))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// New speaks QMP over an established connection. It takes ownership of conn.
func New(ctx context.Context, conn net.Conn) (*Client, error) { return newClient(ctx, conn) }

func newClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		pending: make(map[string]chan response),
		events:  make(chan Event, 64),
		done:    make(chan struct{}),
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), maxLine)

	// The greeting arrives before anything else. Cancelling ctx ends the
	// wait too, not only its deadline: a QEMU that is exiting accepts
	// connections it never greets.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	unblock := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	scanned := sc.Scan()
	if !unblock() {
		return nil, fmt.Errorf("qmp: read greeting: %w", context.Cause(ctx))
	}
	if !scanned {
		return nil, fmt.Errorf("qmp: read greeting: %w", errors.Join(ErrClosed, sc.Err()))
	}
	conn.SetReadDeadline(time.Time{})
	var greeting struct {
		QMP struct {
			Version struct {
				QEMU struct {
					Major int `json:"major"`
					Minor int `json:"minor"`
					Micro int `json:"micro"`
				} `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(sc.Bytes(), &greeting); err != nil {
		return nil, fmt.Errorf("qmp: parse greeting: %w", err)
	}
	v := greeting.QMP.Version.QEMU
	c.version = Version{v.Major, v.Minor, v.Micro}

	go c.readLoop(sc)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version reports the QEMU version announced in the greeting.
func (c *Client) Version() Version { return c.version }

// Events returns the channel of asynchronous events. Events are dropped
// when nobody reads them and the buffer is full. The channel is closed when
// the connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// Done returns a channel closed when the connection ends.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection. Pending commands fail with ErrClosed.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) readLoop(sc *bufio.Scanner) {
	defer close(c.done)
	defer close(c.events)
	for sc.Scan() {
		var r response
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue // not ours to act on; a broken line is skipped
		}
		if r.Event != "" {
			var ev Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				select {
				case c.events <- ev:
				default:
				}
			}
			continue
		}
		c.mu.Lock()
		ch, ok := c.pending[r.ID]
		delete(c.pending, r.ID)
		c.mu.Unlock()
		if ok {
			ch <- r
		}
	}
	c.mu.Lock()
	c.err = ErrClosed
	if err := sc.Err(); err != nil {
		c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// Execute runs command with args (marshalled to JSON; nil for none) and
// decodes its return value into result (nil to discard it).
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

// GetFD hands QEMU a copy of the open file f under name (QMP getfd), for
// commands that take a file descriptor by name: QEMU need not (and,
// confined, cannot) open the file itself.
func (c *Client) GetFD(ctx context.Context, name string, f *os.File) error {
	return c.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, unix.UnixRights(int(f.Fd())))
}

// CloseFD closes QEMU's copy of the file passed as name with GetFD, for
// when the command that was to take it failed.
func (c *Client) CloseFD(ctx context.Context, name string) error {
	return c.Execute(ctx, "closefd", map[string]any{"fdname": name}, nil)
}

// AddFD adds a copy of the open file f to a new fd set (QMP add-fd) and
// returns the set's ID: QEMU then opens "/dev/fdset/<id>" from it, with
// the access mode f was opened with.
func (c *Client) AddFD(ctx context.Context, f *os.File) (int, error) {
	var r struct {
		FDSetID int `json:"fdset-id"`
	}
	if err := c.execute(ctx, "add-fd", nil, &r, unix.UnixRights(int(f.Fd()))); err != nil {
		return 0, err
	}
	return r.FDSetID, nil
}

// RemoveFDSet closes QEMU's copies of the files in fd set id.
func (c *Client) RemoveFDSet(ctx context.Context, id int) error {
	return c.Execute(ctx, "remove-fd", map[string]any{"fdset-id": id}, nil)
}

func (c *Client) execute(ctx context.Context, command string, args, result any, oob []byte) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	ch := make(chan response, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: marshal arguments: %w", command, err)
	}
	b = append(b, '\n')
	c.wmu.Lock()
	if oob != nil {
		uc, ok := c.conn.(*net.UnixConn)
		if !ok {
			c.wmu.Unlock()
			c.forget(id)
			return fmt.Errorf("qmp %s: passing a file needs a unix socket", command)
		}
		_, _, err = uc.WriteMsgUnix(b, oob, nil)
	} else {
		_, err = c.conn.Write(b)
	}
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w: %w", command, ErrClosed, err)
	}

	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", command, ErrClosed)
		}
		if r.Error != nil {
			r.Error.Command = command
			return r.Error
		}
		if result != nil && len(r.Return) > 0 {
			if err := json.Unmarshal(r.Return, result); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}
