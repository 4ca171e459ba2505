// Command nettool is the traffic generator of bench/network: a static
// binary that runs inside the container under test (serve) and in the
// peer network namespace (up, down, rr). Busybox's nc writes 1 KiB at a
// time and cannot time round trips, so it measures nothing useful.
//
//	nettool serve                       sink on :5001, source on :5002, echo on :5003
//	nettool up   HOST BYTES             send BYTES to HOST's sink; prints "MB/s"
//	nettool down HOST BYTES             receive BYTES from HOST's source; prints "MB/s"
//	nettool rr   HOST COUNT SIZE        COUNT request/responses of SIZE bytes; prints "median_us p99_us"
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"time"
)

// Ports of serve.
const (
	SinkPort   = 5001
	SourcePort = 5002
	EchoPort   = 5003
)

// chunk is the size of each write: large, as a real sender's are.
const chunk = 256 << 10

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: nettool serve | up HOST BYTES | down HOST BYTES | rr HOST COUNT SIZE")
	}
	num := func(i int) (int64, error) {
		if i >= len(args) {
			return 0, fmt.Errorf("%s: missing argument %d", args[0], i)
		}
		return strconv.ParseInt(args[i], 10, 64)
	}
	switch args[0] {
	case "serve":
		return serve("")
	case "up", "down":
		n, err := num(2)
		if err != nil {
			return err
		}
		f := Up
		if args[0] == "down" {
			f = Down
		}
		d, err := f(args[1], n)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%.1f\n", float64(n)/1e6/d.Seconds())
		return nil
	case "rr":
		count, err := num(2)
		if err != nil {
			return err
		}
		size, err := num(3)
		if err != nil {
			return err
		}
		lat, err := RoundTrips(args[1], int(count), int(size))
		if err != nil {
			return err
		}
		slices.Sort(lat)
		fmt.Fprintf(out, "%d %d\n", lat[len(lat)/2].Microseconds(), lat[len(lat)*99/100].Microseconds())
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// serve answers on the three ports of host (all addresses when "") until
// one listener fails.
func serve(host string) error {
	errc := make(chan error, 3)
	for port, handle := range map[int]func(net.Conn) error{SinkPort: sink, SourcePort: source, EchoPort: echo} {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					errc <- err
					return
				}
				go func() {
					defer c.Close()
					if err := handle(c); err != nil {
						fmt.Fprintln(os.Stderr, "nettool:", err)
					}
				}()
			}
		}()
	}
	return <-errc
}

// sink reads to EOF and answers with the number of bytes read.
func sink(c net.Conn) error {
	n, err := io.CopyBuffer(io.Discard, c, make([]byte, chunk))
	if err != nil {
		return err
	}
	return binary.Write(c, binary.BigEndian, n)
}

// source reads a byte count and writes that many bytes.
func source(c net.Conn) error {
	var n int64
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return err
	}
	buf := make([]byte, chunk)
	for n > 0 {
		w, err := c.Write(buf[:min(n, chunk)])
		if err != nil {
			return err
		}
		n -= int64(w)
	}
	return nil
}

// echo writes back what it reads.
func echo(c net.Conn) error {
	_, err := io.CopyBuffer(c, c, make([]byte, 64<<10))
	return err
}

// Up sends n bytes to host's sink, and returns the time until the sink
// acknowledged them all.
func Up(host string, n int64) (time.Duration, error) {
	c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(SinkPort)))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	buf := make([]byte, chunk)
	for left := n; left > 0; {
		w, err := c.Write(buf[:min(left, chunk)])
		if err != nil {
			return 0, err
		}
		left -= int64(w)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	var got int64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		return 0, fmt.Errorf("sink's count: %w", err)
	}
	if got != n {
		return 0, fmt.Errorf("sink read %d bytes, sent %d", got, n)
	}
	return time.Since(start), nil
}

// Down asks host's source for n bytes and returns the time to receive them.
func Down(host string, n int64) (time.Duration, error) {
	c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(SourcePort)))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	if err := binary.Write(c, binary.BigEndian, n); err != nil {
		return 0, err
	}
	got, err := io.CopyBuffer(io.Discard, c, make([]byte, chunk))
	if err != nil {
		return 0, err
	}
	if got != n {
		return 0, fmt.Errorf("received %d bytes, asked for %d", got, n)
	}
	return time.Since(start), nil
}

// RoundTrips sends count requests of size bytes to host's echo, one at a
// time, and returns how long each took to come back.
func RoundTrips(host string, count, size int) ([]time.Duration, error) {
	if count <= 0 || size <= 0 || size > 1<<20 {
		return nil, fmt.Errorf("rr: count %d, size %d", count, size)
	}
	c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(EchoPort)))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	req, resp := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, 0, count)
	for range count {
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}
