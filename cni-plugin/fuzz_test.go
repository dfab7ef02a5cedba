package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nexthop-net/nexthop/ipam"
)

// FuzzParseConfig feeds arbitrary network config JSON (the plugin's stdin)
// to parseConfig. It must never panic; an error must be a CNI error with a
// code; and an accepted config must hold what ADD, CHECK, DEL and GC rely
// on without looking again:
//
//   - no ipam section, an MTU of 0 (ask the daemon) or within MinMTU-MaxMTU,
//     and whatever MTU podMTU then picks is within range too;
//   - an absolute IPAM socket path, a clean absolute pending-release
//     directory, a log level the logger understands;
//   - a prevResult that CHECK can convert and search (resultIP, resultMTU)
//     without panicking;
//   - for a cniVersion the plugin claims (version.All, which skel enforces
//     before any verb runs), an ADD result converts to that version: else
//     ADD would wire the pod and then fail to print its result.
//
// Seeds are in testdata/fuzz/FuzzParseConfig.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","ipamSocket":"/run/nexthop/nexthop.sock"}`))
	f.Fuzz(func(t *testing.T, stdin []byte) {
		conf, cerr := parseConfig(stdin)
		if cerr != nil {
			if cerr.Code == 0 || cerr.Msg == "" {
				t.Fatalf("parseConfig error without a CNI code or message: %#v", cerr)
			}
			if conf != nil {
				t.Fatalf("parseConfig returned both a config and an error %q", cerr.Msg)
			}
			return
		}
		if conf.IPAM.Type != "" {
			t.Fatalf("accepted an ipam section of type %q", conf.IPAM.Type)
		}
		if conf.MTU != 0 && (conf.MTU < ipam.MinMTU || conf.MTU > ipam.MaxMTU) {
			t.Fatalf("accepted mtu %d, outside %d-%d", conf.MTU, ipam.MinMTU, ipam.MaxMTU)
		}
		for _, daemonMTU := range []int{0, ipam.MinMTU, 1480, ipam.MaxMTU} {
			if mtu, src := conf.podMTU(daemonMTU); mtu < ipam.MinMTU || mtu > ipam.MaxMTU || src == "" {
				t.Fatalf("podMTU(%d) = %d (from %q), outside %d-%d", daemonMTU, mtu, src, ipam.MinMTU, ipam.MaxMTU)
			}
		}
		if conf.IPAMSocket == "" || !filepath.IsAbs(conf.IPAMSocket) {
			t.Fatalf("accepted ipamSocket %q: not an absolute path", conf.IPAMSocket)
		}
		if !filepath.IsAbs(conf.PendingReleaseDir) || filepath.Clean(conf.PendingReleaseDir) != conf.PendingReleaseDir {
			t.Fatalf("accepted pendingReleaseDir %q: not a clean absolute path", conf.PendingReleaseDir)
		}
		if _, err := parseLevel(conf.LogLevel); err != nil {
			t.Fatalf("accepted logLevel %q the logger refuses: %v", conf.LogLevel, err)
		}
		_ = conf.logger()

		if conf.PrevResult != nil {
			// What CHECK does with it. A panic here is reported as a test
			// failure, so the rest of the package's tests still run.
			noPanic(t, "CHECK's reading of prevResult", func() {
				if prev, err := current.NewResultFromResult(conf.PrevResult); err == nil {
					for _, netns := range []string{"", "/run/netns/pod"} {
						resultIP(prev, netns, false)
						resultIP(prev, netns, true)
						resultMTU(prev, netns, "eth0")
					}
				}
			})
		}

		if slices.Contains(version.All.SupportedVersions(), conf.CNIVersion) {
			if _, err := addResult().GetAsVersion(conf.CNIVersion); err != nil {
				t.Fatalf("cniVersion %q is supported, but an ADD result does not convert to it: %v", conf.CNIVersion, err)
			}
		}
	})
}

// noPanic runs fn, failing the test if it panics.
func noPanic(t *testing.T, what string, fn func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s panicked: %v\n%s", what, r, debug.Stack())
		}
	}()
	fn()
}

// addResult is what a successful ADD returns (see add in plugin.go).
func addResult() *current.Result {
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: "nh0123456789a", Mac: "02:00:00:00:00:01", Mtu: 1500},
			{Name: "eth0", Mac: "02:00:00:00:00:02", Sandbox: "/run/netns/pod", Mtu: 1500},
		},
		IPs: []*current.IPConfig{{
			Address:   net.IPNet{IP: net.IPv4(10, 244, 1, 2).To4(), Mask: net.CIDRMask(32, 32)},
			Gateway:   Gateway.AsSlice(),
			Interface: current.Int(1),
		}},
		Routes: []*types.Route{{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  Gateway.AsSlice(),
		}},
	}
}

// FuzzParseArgs feeds arbitrary CNI_ARGS to parseArgs. It must never
// panic; errors are CNI errors (code 4, invalid environment variables).
// Two properties hold besides:
//
//   - keys the plugin does not know are ignored, however many: runtimes
//     pass keys meant for other plugins. Any string of key=value pairs
//     whose keys are not fields of k8sArgs is accepted.
//   - what is accepted round-trips: the pod namespace, name, infra
//     container ID and UID, written back as CNI_ARGS, parse to the same.
//
// Seeds are in testdata/fuzz/FuzzParseArgs.
func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=5f3e")
	fields := k8sArgsFields()
	f.Fuzz(func(t *testing.T, s string) {
		a, cerr := parseArgs(s)
		if cerr != nil {
			if cerr.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(cerr.Msg, "CNI_ARGS") {
				t.Fatalf("parseArgs(%q): code %d %q, want code %d naming CNI_ARGS", s, cerr.Code, cerr.Msg, types.ErrInvalidEnvironmentVariables)
			}
			if wellFormedForeign(s, fields) {
				t.Fatalf("parseArgs(%q) refused key=value pairs it should ignore: %s", s, cerr.Msg)
			}
			return
		}
		var pairs []string
		for _, kv := range [][2]string{
			{"K8S_POD_NAMESPACE", string(a.K8S_POD_NAMESPACE)},
			{"K8S_POD_NAME", string(a.K8S_POD_NAME)},
			{"K8S_POD_INFRA_CONTAINER_ID", string(a.K8S_POD_INFRA_CONTAINER_ID)},
			{"K8S_POD_UID", string(a.K8S_POD_UID)},
		} {
			if strings.ContainsAny(kv[1], ";=") {
				t.Fatalf("parseArgs(%q) gave %s = %q, which CNI_ARGS cannot carry", s, kv[0], kv[1])
			}
			if kv[1] != "" {
				pairs = append(pairs, kv[0]+"="+kv[1])
			}
		}
		again, cerr := parseArgs(strings.Join(pairs, ";"))
		if cerr != nil {
			t.Fatalf("parseArgs(%q) accepted, its values written back (%q) refused: %s", s, strings.Join(pairs, ";"), cerr.Msg)
		}
		again.IgnoreUnknown = a.IgnoreUnknown
		if !reflect.DeepEqual(a, again) {
			t.Fatalf("round trip of %q: %+v became %+v", s, a, again)
		}
	})
}

// k8sArgsFields are the names LoadArgs matches keys against: the fields of
// k8sArgs, embedded ones included.
func k8sArgsFields() map[string]bool {
	fields := map[string]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			fields[f.Name] = true
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
			}
		}
	}
	walk(reflect.TypeFor[k8sArgs]())
	return fields
}

// wellFormedForeign reports whether s is key=value pairs joined by ";" with
// no key the plugin knows.
func wellFormedForeign(s string, fields map[string]bool) bool {
	if s == "" {
		return true
	}
	for _, pair := range strings.Split(s, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || fields[kv[0]] {
			return false
		}
	}
	return true
}

// FuzzGC feeds arbitrary GC requests (the plugin's stdin) to GC, against a
// real IPAM daemon holding one live attachment, live/eth0. GC must never
// panic, and an error must be a CNI error with a code. Above all, nothing
// is released unless the request carries a list of valid attachments: the
// key cni.dev/valid-attachments, exactly, holding a JSON array (not null).
// Besides:
//
//   - a refused request releases nothing;
//   - a listed attachment is never released;
//   - an accepted request releases the attachment when it is not listed.
//
// Every request that is a JSON object is pointed at the test's daemon (an
// "ipamSocket" appended last, which wins), never at a real node's.
func FuzzGC(f *testing.F) {
	sock, alloc := serveIPAM(f, "10.91.0.0/24")
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop"}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":null}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":[]}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":[{"containerID":"live","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":[{"containerID":"other","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","CNI.DEV/VALID-ATTACHMENTS":[]}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/attachments":[]}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":[],"cni.dev/valid-attachments":null}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":[{"containerID":"live"}]}`,
		`{"cniVersion":"1.1.0","name":"nexthop","type":"nexthop","cni.dev/valid-attachments":{"containerID":"live","ifname":"eth0"}}`,
		`null`, `[]`, `{}`,
	} {
		f.Add([]byte(s))
	}
	live := ipam.Request{ContainerID: "live", IfName: "eth0"}
	f.Fuzz(func(t *testing.T, stdin []byte) {
		ctx := context.Background()
		if _, err := alloc.Allocate(ctx, live); err != nil {
			t.Fatalf("allocate live/eth0: %v", err)
		}
		req, pointed := pointAt(stdin, sock)
		if conf, cerr := parseConfig(req); pointed && cerr == nil && conf.IPAMSocket != sock {
			t.Fatalf("harness: request would reach %s, not the test's daemon", conf.IPAMSocket)
		}
		if _, cerr := validAttachments(req); !pointed && cerr == nil {
			t.Fatalf("harness: %q is no JSON object, yet has a list: GC would reach the default socket", req)
		}
		var err error
		noPanic(t, "GC", func() { err = GC(ctx, &skel.CmdArgs{StdinData: req}) })
		_, kept := alloc.Get(live.ContainerID, live.IfName)
		hasList, listed := gcList(req, live.ContainerID, live.IfName)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code == 0 || te.Msg == "" {
				t.Fatalf("GC error without a CNI code or message: %#v", err)
			}
			if !kept {
				t.Fatalf("refused GC (%s) released live/eth0 anyway", te.Msg)
			}
			return
		}
		switch {
		case !hasList:
			t.Fatalf("GC without a list of valid attachments succeeded (kept live/eth0: %v)", kept)
		case listed && !kept:
			t.Fatal("GC released live/eth0, which its list names")
		case !listed && kept:
			t.Fatal("GC left live/eth0, which its list leaves out")
		}
	})
}

// pointAt returns stdin with "ipamSocket": sock appended when it is a JSON
// object (the last of duplicate keys wins, whatever their case), and
// whether it was one.
func pointAt(stdin []byte, sock string) ([]byte, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(stdin, &m) != nil || m == nil {
		return stdin, false
	}
	body := bytes.TrimRightFunc(stdin, unicode.IsSpace)
	body = body[:len(body)-1] // the closing brace
	if len(m) > 0 {
		body = append(body, ',')
	}
	s, _ := json.Marshal(sock)
	return append(append(append(slices.Clip(body), `"ipamSocket":`...), s...), '}'), true
}

// gcList is the fuzz oracle: whether req holds a list of valid attachments
// (decoded apart from the plugin: the exact key, a JSON array), and whether
// that list names containerID/ifName.
func gcList(req []byte, containerID, ifName string) (hasList, listed bool) {
	var m map[string]any
	if json.Unmarshal(req, &m) != nil {
		return false, false
	}
	v, ok := m[ValidAttachmentsKey].([]any)
	if !ok {
		return false, false
	}
	var list []types.GCAttachment
	b, _ := json.Marshal(v)
	if json.Unmarshal(b, &list) != nil {
		return true, false
	}
	for _, a := range list {
		if a.ContainerID == containerID && a.IfName == ifName {
			return true, true
		}
	}
	return true, false
}
