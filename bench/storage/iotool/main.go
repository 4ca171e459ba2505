// Command iotool is the load of bench/storage: a static binary run inside
// the container under test (and on the host) against a directory.
//
//	iotool seq   DIR MB        write MB in 1 MiB writes, fsync, then read it back; prints "write_MBps read_MBps"
//	iotool rand  DIR MB N      N random 4 KiB preads, then N pwrites (and an fsync), in an MB file; prints "read_iops write_iops"
//	iotool small DIR N         create N 4 KiB files, stat and read each, remove each; prints "files_per_s"
package main

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "iotool:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) < 3 {
		return errors.New("usage: iotool seq DIR MB | rand DIR MB N | small DIR N")
	}
	dir := args[1]
	num := func(i int) (int, error) {
		if i >= len(args) {
			return 0, fmt.Errorf("%s: missing argument %d", args[0], i)
		}
		return strconv.Atoi(args[i])
	}
	a, err := num(2)
	if err != nil {
		return err
	}
	switch args[0] {
	case "seq":
		w, r, err := seq(dir, a)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%.1f %.1f\n", w, r)
		return err
	case "rand":
		n, err := num(3)
		if err != nil {
			return err
		}
		r, w, err := randIO(dir, a, n)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%.0f %.0f\n", r, w)
		return err
	case "small":
		f, err := small(dir, a)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%.0f\n", f)
		return err
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func seq(dir string, mb int) (writeMBps, readMBps float64, err error) {
	p := filepath.Join(dir, "seq.dat")
	defer os.Remove(p)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	f, err := os.Create(p)
	if err != nil {
		return 0, 0, err
	}
	for range mb {
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return 0, 0, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, 0, err
	}
	f.Close()
	writeMBps = float64(mb) * (1 << 20) / 1e6 / time.Since(start).Seconds()
	start = time.Now()
	f, err = os.Open(p)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	n, err := io.CopyBuffer(io.Discard, f, buf)
	if err != nil {
		return 0, 0, err
	}
	return writeMBps, float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

func randIO(dir string, mb, n int) (readIOPS, writeIOPS float64, err error) {
	p := filepath.Join(dir, "rand.dat")
	defer os.Remove(p)
	f, err := os.Create(p)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for range mb {
		if _, err := f.Write(chunk); err != nil {
			return 0, 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, 0, err
	}
	blocks := int64(mb) << 20 / 4096
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	for range n {
		if _, err := f.ReadAt(buf, rng.Int64N(blocks)*4096); err != nil {
			return 0, 0, err
		}
	}
	readIOPS = float64(n) / time.Since(start).Seconds()
	start = time.Now()
	for range n {
		if _, err := f.WriteAt(buf, rng.Int64N(blocks)*4096); err != nil {
			return 0, 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, 0, err
	}
	return readIOPS, float64(n) / time.Since(start).Seconds(), nil
}

func small(dir string, n int) (float64, error) {
	d := filepath.Join(dir, "small")
	if err := os.Mkdir(d, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(d)
	data := make([]byte, 4096)
	start := time.Now()
	for i := range n {
		if err := os.WriteFile(filepath.Join(d, strconv.Itoa(i)), data, 0o644); err != nil {
			return 0, err
		}
	}
	for i := range n {
		p := filepath.Join(d, strconv.Itoa(i))
		if _, err := os.Stat(p); err != nil {
			return 0, err
		}
		if _, err := os.ReadFile(p); err != nil {
			return 0, err
		}
	}
	for i := range n {
		if err := os.Remove(filepath.Join(d, strconv.Itoa(i))); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
