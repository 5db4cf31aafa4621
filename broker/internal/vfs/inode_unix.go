//go:build unix

package vfs

import (
	"os"
	"syscall"
)

// inode names the file behind fi, so that the fault layer follows a file
// across renames and knows two opens of it for one.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}
