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

	"github.com/cocoon-runtime/cocoon/internal/flock"
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

// Delete removes the document under key and its lock file. The caller
// holds the key's lock: a process waiting for that lock notices that the
// file it waits on is gone and locks the new one instead (see Lock), so
// removing the lock file never lets two processes hold it. Deleting a
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
func (s *Store) List() ([]string, error) { return s.keys(".json") }

// Orphans returns the keys that have a lock file but no document: what a
// process killed between locking a new key and saving it left, or a key
// being created right now. Remove their lock files with Delete, holding
// the lock.
func (s *Store) Orphans() ([]string, error) {
	locked, err := s.keys(".lock")
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, k := range locked {
		if _, err := os.Lstat(filepath.Join(s.dir, k+".json")); errors.Is(err, os.ErrNotExist) {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// keys returns the valid keys that have a file with extension ext, sorted.
func (s *Store) keys(ext string) ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list state: %w", err)
	}
	var keys []string
	for _, e := range entries {
		if k, ok := strings.CutSuffix(e.Name(), ext); ok && validKey.MatchString(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// ErrLocked is returned by TryLock when another process holds the lock.
var ErrLocked = flock.ErrLocked

// Lock takes an exclusive lock on key, waiting until ctx is done. The
// lock is released by calling the returned function, or by the kernel when
// the process dies. A holder may Delete the key (and so its lock file):
// waiters then lock the file that is there now (see internal/flock).
func (s *Store) Lock(ctx context.Context, key string) (unlock func(), err error) {
	return s.lock(ctx, key, unix.LOCK_EX)
}

// TryLock takes the lock on key if it is free, and fails with ErrLocked
// if it is not.
func (s *Store) TryLock(key string) (unlock func(), err error) {
	return s.lock(context.Background(), key, unix.LOCK_EX|unix.LOCK_NB)
}

func (s *Store) lock(ctx context.Context, key string, how int) (func(), error) {
	p, err := s.path(key, ".lock")
	if err != nil {
		return nil, err
	}
	f, err := flock.Lock(ctx, p, how)
	if err != nil {
		return nil, fmt.Errorf("lock state %s: %w", key, err)
	}
	return func() { f.Close() }, nil
}
