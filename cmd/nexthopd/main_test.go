package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func readManifest(t *testing.T, name string, into any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "manifests", "base", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// The DaemonSet passes only flags nexthopd has, in Kubernetes mode.
func TestDaemonSetArgs(t *testing.T) {
	var ds appsv1.DaemonSet
	readManifest(t, "daemonset.yaml", &ds)
	var args []string
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == "nexthopd" {
			args = c.Args
		}
	}
	if len(args) == 0 {
		t.Fatal("no nexthopd container with args in the DaemonSet")
	}
	fs := flag.NewFlagSet("nexthopd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := newFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("DaemonSet args %q: %v", args, err)
	}
	if fs.NArg() != 0 || !o.kubernetes || o.baseConfig == "" {
		t.Fatalf("DaemonSet args %q: want Kubernetes mode with a base config, got %+v", args, o)
	}
	// The probes go where the health endpoint listens.
	port := o.healthListen[strings.LastIndex(o.healthListen, ":")+1:]
	for _, c := range ds.Spec.Template.Spec.Containers {
		for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
			if c.Name == "nexthopd" && (p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != port) {
				t.Errorf("%s probe does not go to the health port %s: %+v", what, port, p)
			}
		}
	}
}

// The ConfigMap's base.yaml is a valid base config.
func TestConfigMapBase(t *testing.T) {
	var cm corev1.ConfigMap
	readManifest(t, "configmap.yaml", &cm)
	path := filepath.Join(t.TempDir(), "base.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["base.yaml"]), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := loadBase(path)
	if err != nil {
		t.Fatalf("the ConfigMap's base.yaml: %v", err)
	}
	if c.IPAMSocket == "" || c.StateDir == "" {
		t.Fatalf("base.yaml lacks the paths the DaemonSet mounts: %+v", c)
	}
}

func TestLoadBaseRefusesNodeFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "base.yaml")
	os.WriteFile(path, []byte("holdTime: 9s\npodCIDR: 10.244.1.0/24\naddress: 192.0.2.1\n"), 0o644)
	_, err := loadBase(path)
	if err == nil || !strings.Contains(err.Error(), "address, podCIDR") {
		t.Fatalf("base config with node fields: got %v, want them named", err)
	}
	os.WriteFile(path, []byte("holdTimer: 9s\n"), 0o644)
	if _, err := loadBase(path); err == nil {
		t.Fatal("a misspelt field was accepted")
	}
}
