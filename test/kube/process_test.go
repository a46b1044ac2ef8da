package kube

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a helper process (see TestHelperProcess).
const helperEnv = "XLB_KUBE_HELPER"

// TestHelperProcess is not a real test: re-executed with helperEnv set, it starts a child with
// StartProcess from a thread that is then discarded (as network-namespace code does), checks
// the child survived that, prints the child's PID, and kills itself with SIGKILL, as a crashing
// or timed-out test binary would die.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process only")
	}
	// Start the child from a goroutine locked to its thread that then returns (Go may then
	// terminate that thread): the worst case for Pdeathsig, which is tied to the forking thread.
	child := exec.Command("sleep", "300")
	var exited <-chan struct{}
	var err error
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		exited, err = StartProcess(child, nil)
		close(done)
	}()
	<-done
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-exited:
		fmt.Println("ERR child died when other threads exited")
		os.Exit(1)
	default:
	}
	fmt.Println("PID", child.Process.Pid)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
}

// TestChildrenDieWithTheTestProcess checks the guarantee StartProcess gives: when the test
// binary dies without running its cleanups, its long-running children die too.
func TestChildrenDieWithTheTestProcess(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, _ := cmd.CombinedOutput() // it dies of SIGKILL on purpose
	var pid int
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "ERR") {
			t.Fatalf("helper: %s", line)
		}
		if p, ok := strings.CutPrefix(line, "PID "); ok {
			pid, _ = strconv.Atoi(strings.TrimSpace(p))
		}
	}
	if pid == 0 {
		t.Fatalf("helper printed no child PID:\n%s", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The child was re-parented (to init or a subreaper) and reaped there; a zombie
		// would still answer kill 0, so look at its state too.
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(data), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL) // do not leak it either way
			t.Fatalf("child %d still alive after its parent died: %s", pid, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
