package consumequeue

import (
	"container/list"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/postbus/postbus/broker/internal/vfs"
)

// fileKey names one queue file without building its path, so cache hits do
// not allocate.
type fileKey struct {
	q    *queue
	base int64
}

func (k fileKey) path() string { return filepath.Join(k.q.dir, fileName(k.base)) }

func fileName(base int64) string { return fmt.Sprintf("%020d", base) }

// handle is a shared open file. refs counts the goroutines using it; a handle
// evicted while in use is closed by its last user.
type handle struct {
	f   *os.File
	key fileKey

	// guarded by fileCache.mu
	refs   int
	doomed bool
	elem   *list.Element
}

// fileCache caps the number of open queue files: with tens of thousands of
// queues, keeping every file open would exhaust descriptors.
type fileCache struct {
	fs  vfs.FS
	max int

	mu     sync.Mutex
	m      map[fileKey]*handle // guarded by mu
	lru    list.List           // guarded by mu; of *handle, most recent first
	closed bool                // guarded by mu
}

func newFileCache(fsys vfs.FS, max int) *fileCache {
	return &fileCache{fs: fsys, max: max, m: make(map[fileKey]*handle)}
}

// acquire returns an open handle for key; create makes the file if missing
// (only the writer creates: a reader reopening a file deleted under it must
// not resurrect it). The caller must release the handle.
func (c *fileCache) acquire(key fileKey, create bool) (*handle, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if h, ok := c.m[key]; ok {
		h.refs++
		c.lru.MoveToFront(h.elem)
		c.mu.Unlock()
		return h, nil
	}
	c.mu.Unlock()

	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := c.fs.OpenFile(key.path(), flag, 0o644)
	if err != nil {
		return nil, err
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = f.Close()
		return nil, ErrClosed
	}
	if h, ok := c.m[key]; ok {
		// Another goroutine opened it meanwhile; use theirs.
		h.refs++
		c.lru.MoveToFront(h.elem)
		c.mu.Unlock()
		_ = f.Close()
		return h, nil
	}
	h := &handle{f: f, key: key, refs: 1}
	h.elem = c.lru.PushFront(h)
	c.m[key] = h
	var victims []*os.File
	for e := c.lru.Back(); e != nil && len(c.m) > c.max; {
		prev := e.Prev()
		v := e.Value.(*handle)
		if v.refs == 0 {
			c.lru.Remove(e)
			delete(c.m, v.key)
			victims = append(victims, v.f)
		}
		e = prev
	}
	c.mu.Unlock()
	for _, v := range victims {
		_ = v.Close()
	}
	return h, nil
}

func (c *fileCache) release(h *handle) {
	c.mu.Lock()
	h.refs--
	closeNow := h.doomed && h.refs == 0
	c.mu.Unlock()
	if closeNow {
		_ = h.f.Close()
	}
}

// evict drops the handle of one file, e.g. before deleting it.
func (c *fileCache) evict(key fileKey) {
	c.mu.Lock()
	h, ok := c.m[key]
	if !ok {
		c.mu.Unlock()
		return
	}
	closeNow := c.dropLocked(h)
	c.mu.Unlock()
	if closeNow {
		_ = h.f.Close()
	}
}

// evictQueue drops every handle of q.
func (c *fileCache) evictQueue(q *queue) {
	c.mu.Lock()
	var victims []*os.File
	for k, h := range c.m {
		if k.q == q && c.dropLocked(h) {
			victims = append(victims, h.f)
		}
	}
	c.mu.Unlock()
	for _, f := range victims {
		_ = f.Close()
	}
}

// dropLocked unlinks h from the cache and reports whether the caller must
// close it now (nobody is using it).
func (c *fileCache) dropLocked(h *handle) bool {
	c.lru.Remove(h.elem)
	delete(c.m, h.key)
	if h.refs > 0 {
		h.doomed = true
		return false
	}
	return true
}

func (c *fileCache) closeAll() error {
	c.mu.Lock()
	c.closed = true
	var victims []*os.File
	for _, h := range c.m {
		if c.dropLocked(h) {
			victims = append(victims, h.f)
		}
	}
	c.mu.Unlock()
	var errs []error
	for _, f := range victims {
		if err := f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *fileCache) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
