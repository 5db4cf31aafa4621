package broker

import "golang.org/x/sys/windows"

// diskSpace returns the bytes the caller may still use on the volume
// holding dir, and its size.
func diskSpace(dir string) (avail, total uint64, err error) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, 0, err
	}
	var free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return 0, 0, err
	}
	return avail, total, nil
}
