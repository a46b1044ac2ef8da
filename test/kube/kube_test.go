package kube

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStartStop starts a real etcd + kube-apiserver, writes and reads objects through the
// clientset and through kubectl with the written kubeconfig, checks RBAC is enforced for an
// impersonated identity, and checks Stop leaves no process behind.
func TestStartStop(t *testing.T) {
	c := StartT(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
		Data: map[string]string{"k": "v"}}
	if _, err := c.Client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	got, err := c.Client.CoreV1().ConfigMaps("default").Get(ctx, "probe", metav1.GetOptions{})
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("get configmap: %v %v", got, err)
	}
	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if !strings.HasPrefix(v.GitVersion, "v1.") {
		t.Errorf("server version %q, want v1.x", v.GitVersion)
	}

	if kubectl, err := Binary("kubectl"); err == nil {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig,
			"get", "configmap", "probe", "-n", "default", "-o", "jsonpath={.data.k}").CombinedOutput()
		if err != nil || string(out) != "v" {
			t.Errorf("kubectl get: %q %v", out, err)
		}
		// An impersonated service account with no role bindings must be refused.
		kc := c.Dir + "/nobody.kubeconfig"
		if err := c.WriteKubeconfig(kc, "system:serviceaccount:default:nobody"); err != nil {
			t.Fatal(err)
		}
		out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", kc,
			"get", "configmaps", "-n", "default").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "forbidden") {
			t.Errorf("impersonated kubectl get: want forbidden, got %q %v", out, err)
		}
	} else {
		t.Logf("kubectl checks skipped: %v", err)
	}

	var pids []int
	for _, p := range c.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, pid := range pids {
		// The processes were reaped by Wait, so the PID must be gone.
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("pid %d still alive after Stop", pid)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestMissingBinaries checks the error tells the user what to run.
func TestMissingBinaries(t *testing.T) {
	t.Setenv(EnvBinDir, t.TempDir())
	_, err := BinDir()
	if err == nil || !strings.Contains(err.Error(), "tools/kube/build.sh") {
		t.Fatalf("BinDir with empty dir: %v, want a hint to run tools/kube/build.sh", err)
	}
	_, err = Start(context.Background(), t.TempDir(), Options{})
	if err == nil || !strings.Contains(err.Error(), "tools/kube/build.sh") {
		t.Fatalf("Start with empty dir: %v", err)
	}
	if _, err := os.Stat(os.Getenv(EnvBinDir)); err != nil {
		t.Fatal(err)
	}
}
