package e2e

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	xlbdconfig "github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/provider/config"
	"github.com/xlb-dev/xlb/test/kube"
)

// TestManifestsServerDryRun applies every manifest (each file, and the kustomization as a
// whole) with server-side dry-run and strict field validation against a real kube-apiserver:
// schema errors, unknown fields, bad references and admission rejections fail here, while
// nothing is persisted.
func TestManifestsServerDryRun(t *testing.T) {
	root, err := kube.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	kubectl, err := kube.Binary("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "manifests")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", dir, err)
	}
	c := kube.StartT(t, kube.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) string {
		t.Helper()
		args = append([]string{"--kubeconfig", c.Kubeconfig}, args...)
		out, err := exec.CommandContext(ctx, kubectl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	objects := 0
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		out := run("apply", "--dry-run=server", "--validate=strict", "-f", f)
		n := strings.Count(out, "(server dry run)")
		if n == 0 || n != countDocs(t, f) {
			t.Errorf("%s: %d objects dry-run applied, file has %d:\n%s", f, n, countDocs(t, f), out)
		}
		objects += n
	}
	out := run("apply", "--dry-run=server", "--validate=strict", "-k", dir)
	if n := strings.Count(out, "(server dry run)"); n != objects {
		t.Errorf("kustomization: %d objects, the files have %d:\n%s", n, objects, out)
	}
	t.Logf("dry-run applied %d objects:\n%s", objects, out)

	// Dry run means nothing was created.
	_, err = c.Client.AppsV1().Deployments("kube-system").Get(ctx, "xlb-ccm", metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("deployment xlb-ccm exists after a dry run (err %v)", err)
	}
}

// TestManifestsEmbeddedConfigs checks that the example configurations the manifests ship are
// accepted by the programs that will read them: the cloud-config by xlb-ccm's parser and the
// xlbd config file (plus the DaemonSet's flags) by xlbd's.
func TestManifestsEmbeddedConfigs(t *testing.T) {
	root, err := kube.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	readObject(t, filepath.Join(root, "manifests", "ccm-config.yaml"), "ConfigMap", &cm)
	cfg, err := config.Parse(strings.NewReader(cm.Data["cloud-config.yaml"]))
	if err != nil {
		t.Fatalf("manifests/ccm-config.yaml cloud-config.yaml: %v", err)
	}
	if len(cfg.Dataplanes) == 0 || len(cfg.Pools) == 0 {
		t.Errorf("example cloud-config has no dataplanes or pools: %+v", cfg)
	}

	var xcm corev1.ConfigMap
	readObject(t, filepath.Join(root, "manifests", "xlbd-daemonset.yaml"), "ConfigMap", &xcm)
	var ds appsv1.DaemonSet
	readObject(t, filepath.Join(root, "manifests", "xlbd-daemonset.yaml"), "DaemonSet", &ds)
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(xcm.Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	// The container's args, with the file path and $(NODE_IP) resolved as the kubelet would.
	var args []string
	for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
		a = strings.ReplaceAll(a, "$(NODE_IP)", "10.0.0.11")
		if strings.HasPrefix(a, "--config=") {
			a = "--config=" + cfgFile
		}
		args = append(args, a)
	}
	if _, err := xlbdconfig.Parse(args, io.Discard); err != nil {
		t.Fatalf("xlbd rejects the DaemonSet's configuration (args %q): %v", args, err)
	}
}

// readObject decodes the document of the given kind from a multi-document YAML file.
func readObject(t *testing.T, path, kind string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufioReader(data))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if meta.Kind == kind {
			if err := yaml.UnmarshalStrict(doc, into); err != nil {
				t.Fatalf("%s: %s: %v", path, kind, err)
			}
			return
		}
	}
	t.Fatalf("%s: no %s", path, kind)
}

func countDocs(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	r := utilyaml.NewYAMLReader(bufioReader(data))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err == nil && meta.Kind != "" {
			n++
		}
	}
}

func bufioReader(data []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(data)) }
