package main

import (
	"flag"
	"fmt"
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
	// A fresh install gets the default IPPool with NAT.
	if p, err := o.defaultPool(); err != nil || p == nil || !p.NATOutgoing {
		t.Fatalf("DaemonSet args %q: default IPPool %+v, %v; want one with natOutgoing", args, p, err)
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

func parseFlags(t *testing.T, args ...string) *options {
	t.Helper()
	fs := flag.NewFlagSet("nexthopd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := newFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	return o
}

// Kubernetes-mode flags are refused standalone rather than ignored.
func TestStandaloneRefusesKubernetesFlags(t *testing.T) {
	for _, arg := range []string{"--default-ippool-cidr=none", "--default-ippool-nat-outgoing=false", "--base-config=/x", "--node-name=n"} {
		err := parseFlags(t, arg).checkMode(false)
		if name, _, _ := strings.Cut(arg, "="); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("standalone with %s: got %v, want it refused by name", arg, err)
		}
	}
	if err := parseFlags(t, "--kubernetes", "--default-ippool-cidr=10.0.0.0/16").checkMode(true); err != nil {
		t.Errorf("Kubernetes mode refused its own flag: %v", err)
	}
}

func TestDefaultPoolFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // "" none, "error", or the option's CIDR ("auto" for the zero one) and NAT
	}{
		{nil, "auto nat=true"},
		{[]string{"--default-ippool-nat-outgoing=false"}, "auto nat=false"},
		{[]string{"--default-ippool-cidr=192.168.0.0/16"}, "192.168.0.0/16 nat=true"},
		{[]string{"--default-ippool-cidr=none"}, ""},
		{[]string{"--default-ippool-cidr=none", "--default-ippool-nat-outgoing=true"}, "error"},
		{[]string{"--default-ippool-cidr=10.244.1.1/16"}, "error"},
		{[]string{"--default-ippool-cidr=fd00::/56"}, "error"},
		{[]string{"--default-ippool-cidr=0.0.0.0/0"}, "error"},
		{[]string{"--default-ippool-cidr=Auto"}, "error"},
	} {
		p, err := parseFlags(t, c.args...).defaultPool()
		var got string
		switch {
		case err != nil:
			got = "error"
		case p != nil && !p.CIDR.IsValid():
			got = fmt.Sprintf("auto nat=%v", p.NATOutgoing)
		case p != nil:
			got = fmt.Sprintf("%s nat=%v", p.CIDR, p.NATOutgoing)
		}
		if got != c.want {
			t.Errorf("%q: got %q (%v), want %q", c.args, got, err, c.want)
		}
	}
}
