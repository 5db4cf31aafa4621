//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package broker

import "syscall"

// diskSpace returns the bytes an unprivileged writer may still use on the
// file system holding dir, and the size such a writer sees: what is used
// plus what it may still use, without the blocks reserved for root. So
// DiskUsage is df's Use%: counting the reserved blocks as used would put
// a disk that df shows at 59 % over the 85 % clean watermark (ext4
// reserves 5 % by default, some hosts far more), and the broker would
// delete acknowledged messages from a disk with room.
func diskSpace(dir string) (avail, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	bsize := uint64(st.Bsize)
	used := uint64(st.Blocks) - uint64(st.Bfree)
	return uint64(st.Bavail) * bsize, (used + uint64(st.Bavail)) * bsize, nil
}
