// Package sparse copies and trims sparse files: a VM's RAM file on a tmpfs
// holds data only where the guest wrote, and each byte of it costs a page
// of host memory.
package sparse

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// dataRanges calls fn with each range [start, end) of f that holds data,
// in order.
func dataRanges(f *os.File, size int64, fn func(start, end int64) error) error {
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := fn(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// Copy copies file src to a new file dst, only the ranges that hold data,
// so that dst has src's holes.
func Copy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	err = dataRanges(in, st.Size(), func(pos, end int64) error {
		for pos < end {
			roff, woff := pos, pos
			n, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(end-pos), 0)
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("short copy at %d", pos)
			}
			pos += int64(n)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// PageSize is the unit PunchZeros frees: the host's page.
const PageSize = 4096

// PunchZeros turns every page of file path that holds only zeros into a
// hole, which reads back as zeros but takes no space, and returns how many
// bytes it freed.
func PunchZeros(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var freed int64
	buf := make([]byte, 1<<20)
	zero := make([]byte, PageSize)
	// punch frees the run [start, end) of zero pages, if any.
	punch := func(start, end int64) error {
		if end <= start {
			return nil
		}
		freed += end - start
		return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
	}
	err = dataRanges(f, st.Size(), func(pos, end int64) error {
		run := int64(-1) // start of the current run of zero pages
		for pos < end {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if n == 0 && err != nil {
				return err
			}
			for i := 0; i+PageSize <= n; i += PageSize {
				at := pos + int64(i)
				if bytes.Equal(buf[i:i+PageSize], zero) {
					if run < 0 {
						run = at
					}
				} else if run >= 0 {
					if err := punch(run, at); err != nil {
						return err
					}
					run = -1
				}
			}
			pos += int64(n - n%PageSize)
			if n%PageSize != 0 { // a partial page at the end of the file stays
				break
			}
		}
		if run >= 0 {
			return punch(run, pos)
		}
		return nil
	})
	if err != nil {
		return freed, fmt.Errorf("punch zero pages of %s: %w", path, err)
	}
	return freed, nil
}
