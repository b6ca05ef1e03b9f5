package compat

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill the broker if the test binary dies
// without stopping it (a panic skips deferred calls).
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
