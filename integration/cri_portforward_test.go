package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/portforward"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The port-forward protocol's headers and stream types, as kubectl sends
// them (k8s.io/api/core/v1's StreamType, PortHeader and
// PortForwardRequestIDHeader).
const (
	pfProtocol    = "portforward.k8s.io"
	pfStreamType  = "streamType"
	pfPort        = "port"
	pfRequestID   = "requestID"
	pfStreamData  = "data"
	pfStreamError = "error"
)

// pfSession is a port-forward session to a pod through the CRI's
// streaming server, as kubectl port-forward opens it: one SPDY connection
// to the URL PortForward returned, carrying a pair of streams (error and
// data) for each forwarded connection.
type pfSession struct {
	conn httpstream.Connection
	next atomic.Int32
}

func portForward(t *testing.T, ctx context.Context, rs runtimeapi.RuntimeServiceClient, podID string, port int32) *pfSession {
	t.Helper()
	r, err := rs.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: []int32{port}})
	if err != nil {
		t.Fatalf("PortForward: %v", err)
	}
	u, err := url.Parse(r.Url)
	if err != nil {
		t.Fatal(err)
	}
	tr, up, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	conn, proto, err := spdy.NewDialer(up, &http.Client{Transport: tr}, http.MethodPost, u).Dial(pfProtocol)
	if err != nil {
		t.Fatalf("dial the streaming URL %s: %v", r.Url, err)
	}
	if proto != pfProtocol {
		t.Fatalf("streaming server speaks %q", proto)
	}
	t.Cleanup(func() { conn.Close() })
	return &pfSession{conn: conn}
}

// get makes one forwarded connection to port, as kubectl does for a
// client's: it sends an HTTP GET of path, reads the response to its end,
// then closes its side. It returns the body (nil when no response came)
// and what the server put on the error stream.
func (s *pfSession) get(port int32, path string) (body []byte, errText string, err error) {
	id := strconv.Itoa(int(s.next.Add(1)))
	h := http.Header{}
	h.Set(pfStreamType, pfStreamError)
	h.Set(pfPort, strconv.Itoa(int(port)))
	h.Set(pfRequestID, id)
	errStream, err := s.conn.CreateStream(h)
	if err != nil {
		return nil, "", fmt.Errorf("create error stream: %w", err)
	}
	errStream.Close()
	errc := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(errStream)
		errc <- string(b)
	}()
	h.Set(pfStreamType, pfStreamData)
	data, err := s.conn.CreateStream(h)
	if err != nil {
		return nil, "", fmt.Errorf("create data stream: %w", err)
	}
	defer s.conn.RemoveStreams(errStream, data)
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		if _, err := fmt.Fprintf(data, "GET %s HTTP/1.0\r\n\r\n", path); err != nil {
			done <- result{nil, err}
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(data), nil)
		if err != nil {
			done <- result{nil, err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{b, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		r.err = fmt.Errorf("no response after 60s")
	}
	data.Close()
	select {
	case errText = <-errc:
	case <-time.After(10 * time.Second):
	}
	return r.body, errText, r.err
}

// podNetNS is the network namespace path of a CRI pod, from its verbose
// status (the runtime spec of its sandbox container).
func podNetNS(t *testing.T, ctx context.Context, rs runtimeapi.RuntimeServiceClient, podID string) string {
	t.Helper()
	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("pod status info: %v", err)
	}
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path
		}
	}
	t.Fatal("the pod's spec has no network namespace path")
	return ""
}

// TestCRIPortForward: kubectl port-forward's path through containerd's
// CRI (PortForward, then the port-forward protocol over SPDY on the URL
// it returns) reaches a web server in a Cocoon pod that listens in the
// VM, for a port the pod never declared; ten connections at once each
// get their own full response; a port nobody listens on fails at once;
// removing the pod leaves nothing of the forwarder.
func TestCRIPortForward(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs, _, closeCRI, err := e.ctrd.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeCRI()
	pod, err := runPod(t, ctx, e, rs, "forwarded", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(30))
	}
	netns := podNetNS(t, ctx, rs, pod.id)
	if ok, err := portforward.Installed(netns); err != nil || !ok {
		t.Fatalf("the pod's netns %s has no forwarder table: %v, %v", netns, ok, err)
	}
	cid := pod.start(t, ctx, "web", "httpd", "-f", "-p", "8080", "-h", "/bin")
	size, err := strconv.Atoi(pod.exec(t, ctx, cid, "stat", "-c", "%s", "/bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	pf := portForward(t, ctx, rs, pod.id, 8080)

	var body []byte
	var errText string
	for i := 0; i < 40; i++ { // the server may not be up yet
		body, errText, err = pf.get(8080, "/busybox")
		if err == nil && errText == "" {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || errText != "" || len(body) != size {
		t.Fatalf("GET through port-forward: %d body bytes (want %d), error stream %q, %v", len(body), size, errText, err)
	}

	began := time.Now()
	errs := make(chan error, 10)
	for range 10 {
		go func() {
			body, errText, err := pf.get(8080, "/busybox")
			if err == nil && (errText != "" || len(body) != size) {
				err = fmt.Errorf("%d body bytes (want %d), error stream %q", len(body), size, errText)
			}
			errs <- err
		}()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Errorf("one of ten at once: %v", err)
		}
	}
	t.Logf("ten GETs of %d bytes at once through port-forward: %v", size, time.Since(began).Round(time.Millisecond))

	began = time.Now()
	body, errText, err = pf.get(8081, "/busybox")
	if err == nil || len(body) != 0 || !strings.Contains(errText, "8081") {
		t.Errorf("a port nobody listens on: %d bytes, error stream %q, %v; want no response and an error naming the port", len(body), errText, err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("a port nobody listens on failed after %v", d)
	}
	t.Logf("refused port: %q after %v", errText, time.Since(began).Round(time.Millisecond))

	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(netns); err == nil {
		if ok, err := portforward.Installed(netns); err == nil && ok {
			t.Errorf("the stopped pod's netns %s keeps the forwarder table", netns)
		}
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatal(err)
	}
	if pids := testutil.ProcessesMentioning(pod.id); len(pids) != 0 {
		t.Errorf("processes of the removed pod left: %v", pids)
	}
}
