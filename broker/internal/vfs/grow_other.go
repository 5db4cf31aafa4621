//go:build !linux

package vfs

import "os"

// growTo is Allocate where the system cannot reserve blocks: the file is
// only made size long (sparse), so a full disk shows at write time, not
// here.
func growTo(f *os.File, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() >= size {
		return nil
	}
	return f.Truncate(size)
}
