// Package persist saves runtime state on disk so that another process can
// pick up where one left off.
//
// A Store keeps one JSON document per key in a directory. Writes are atomic
// (a temporary file, fsynced, renamed over the old one), so a reader never
// sees a torn document, and Lock serialises the processes that change the
// same key.
package persist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotFound is returned by Load for a key that has no document.
var ErrNotFound = errors.New("not found")

var validKey = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

// Store is a directory of JSON documents. Files are root-only.
type Store struct {
	dir string
}

// New returns a Store in dir, creating it (mode 0700) if needed.
func New(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

func (s *Store) path(key, ext string) (string, error) {
	if !validKey.MatchString(key) || strings.Contains(key, "..") {
		return "", fmt.Errorf("invalid state key %q", key)
	}
	return filepath.Join(s.dir, key+ext), nil
}

// Save stores v under key, atomically.
func (s *Store) Save(key string, v any) error {
	p, err := s.path(key, ".json")
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("save state %s: %w", key, err)
	}
	f, err := os.CreateTemp(s.dir, "."+key+".tmp-*")
	if err != nil {
		return fmt.Errorf("save state %s: %w", key, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save state %s: %w", key, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save state %s: %w", key, err)
	}
	return nil
}

// Load reads the document under key into v.
func (s *Store) Load(key string, v any) error {
	p, err := s.path(key, ".json")
	if err != nil {
		return err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load state %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("load state %s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("load state %s: %w", key, err)
	}
	return nil
}

// Delete removes the document under key and its lock file. Deleting a
// missing key is not an error.
func (s *Store) Delete(key string) error {
	p, err := s.path(key, ".json")
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete state %s: %w", key, err)
	}
	if l, err := s.path(key, ".lock"); err == nil {
		os.Remove(l)
	}
	return nil
}

// List returns the keys that have a document, sorted.
func (s *Store) List() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list state: %w", err)
	}
	var keys []string
	for _, e := range entries {
		if k, ok := strings.CutSuffix(e.Name(), ".json"); ok && validKey.MatchString(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// Lock takes an exclusive lock on key, waiting until ctx is done. The
// lock is released by calling the returned function, or by the kernel when
// the process dies.
func (s *Store) Lock(ctx context.Context, key string) (unlock func(), err error) {
	p, err := s.path(key, ".lock")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state %s: %w", key, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock state %s: %w", key, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock state %s: %w", key, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
