package ctrtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The port-forward protocol's name, headers and stream types, as kubectl
// sends them (k8s.io/api/core/v1's StreamType, PortHeader and
// PortForwardRequestIDHeader).
const (
	pfProtocol    = "portforward.k8s.io"
	pfStreamType  = "streamType"
	pfPort        = "port"
	pfRequestID   = "requestID"
	pfStreamData  = "data"
	pfStreamError = "error"
)

// PortForward is a port-forward session to a pod through the CRI's
// streaming server, opened as kubectl port-forward opens it: one SPDY
// connection (client-go's) to the URL the CRI's PortForward returned,
// carrying a pair of streams (error and data) for each forwarded
// connection. No listener is opened on the host: each Get is one
// forwarded connection.
type PortForward struct {
	conn httpstream.Connection
	next atomic.Int32
}

// OpenPortForward asks the CRI to forward port of pod podID and dials the
// streaming URL it returns.
func OpenPortForward(ctx context.Context, rs runtimeapi.RuntimeServiceClient, podID string, port int32) (*PortForward, error) {
	r, err := rs.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: []int32{port}})
	if err != nil {
		return nil, fmt.Errorf("PortForward: %w", err)
	}
	u, err := url.Parse(r.Url)
	if err != nil {
		return nil, err
	}
	tr, up, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		return nil, err
	}
	conn, proto, err := spdy.NewDialer(up, &http.Client{Transport: tr}, http.MethodPost, u).Dial(pfProtocol)
	if err != nil {
		return nil, fmt.Errorf("dial the streaming URL %s: %w", r.Url, err)
	}
	if proto != pfProtocol {
		conn.Close()
		return nil, fmt.Errorf("streaming server speaks %q", proto)
	}
	return &PortForward{conn: conn}, nil
}

// Close ends the session.
func (p *PortForward) Close() error { return p.conn.Close() }

// Result is what one forwarded connection gave.
type Result struct {
	// Body is the HTTP response's body length; it was copied to Get's w.
	Body int64
	// FirstByte is the time from opening the connection's streams to the
	// first byte of the response.
	FirstByte time.Duration
	// ErrorStream is what the server wrote on the error stream.
	ErrorStream string
}

// Get makes one forwarded connection to port, as kubectl does for a
// client's: it sends an HTTP/1.0 GET of path, reads the response to its
// end (its body to w), then closes its side. A connection the server
// ended before a whole response came is an error, with ErrorStream set.
func (p *PortForward) Get(port int32, path string, w io.Writer) (Result, error) {
	var res Result
	start := time.Now()
	h := http.Header{}
	h.Set(pfStreamType, pfStreamError)
	h.Set(pfPort, strconv.Itoa(int(port)))
	h.Set(pfRequestID, strconv.Itoa(int(p.next.Add(1))))
	errStream, err := p.conn.CreateStream(h)
	if err != nil {
		return res, fmt.Errorf("create error stream: %w", err)
	}
	errStream.Close()
	errc := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(errStream)
		errc <- string(b)
	}()
	h.Set(pfStreamType, pfStreamData)
	data, err := p.conn.CreateStream(h)
	if err != nil {
		return res, fmt.Errorf("create data stream: %w", err)
	}
	defer p.conn.RemoveStreams(errStream, data)
	done := make(chan error, 1)
	go func() {
		if _, err := fmt.Fprintf(data, "GET %s HTTP/1.0\r\n\r\n", path); err != nil {
			done <- err
			return
		}
		br := bufio.NewReader(data)
		if _, err := br.Peek(1); err != nil {
			done <- err
			return
		}
		res.FirstByte = time.Since(start)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			done <- err
			return
		}
		res.Body, err = io.Copy(w, resp.Body)
		resp.Body.Close()
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		err = fmt.Errorf("no whole response after 2 minutes")
	}
	data.Close()
	select {
	case res.ErrorStream = <-errc:
	case <-time.After(10 * time.Second):
	}
	return res, err
}

// WaitPortForward opens port-forward sessions to port of pod podID until
// a GET of path through one succeeds (the pod's server may still be
// starting), within timeout, and returns that session. A session whose
// connection failed is not reused: the streaming server resets the
// streams of a failed connection, after which its SPDY connection takes
// no new ones, so kubectl, too, ends there.
func WaitPortForward(ctx context.Context, rs runtimeapi.RuntimeServiceClient, podID string, port int32, path string, timeout time.Duration) (*PortForward, error) {
	deadline := time.Now().Add(timeout)
	for {
		pf, err := OpenPortForward(ctx, rs, podID, port)
		if err != nil {
			return nil, err
		}
		r, err := pf.Get(port, path, io.Discard)
		if err == nil {
			return pf, nil
		}
		pf.Close()
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("GET %s through port-forward to port %d: %w (error stream %q)", path, port, err, r.ErrorStream)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
