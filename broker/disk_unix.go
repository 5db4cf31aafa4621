//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package broker

import "syscall"

// diskSpace returns the bytes an unprivileged writer may still use on the
// file system holding dir, and its size.
func diskSpace(dir string) (avail, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	bsize := uint64(st.Bsize)
	return uint64(st.Bavail) * bsize, uint64(st.Blocks) * bsize, nil
}
