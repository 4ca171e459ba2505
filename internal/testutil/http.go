package testutil

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/network"
)

// HTTPGetIn fetches http://addr/ (HTTP/1.0) from the network namespace at
// path, as a client there would, and returns the body without the
// surrounding space.
func HTTPGetIn(path, addr string) (string, error) {
	var c net.Conn
	if err := network.Do(path, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	return HTTPGet(c)
}

// HTTPGet sends an HTTP/1.0 GET of / on c and returns the body without
// the surrounding space.
func HTTPGet(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}
