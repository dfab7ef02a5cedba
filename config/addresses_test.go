package config

import (
	"strings"
	"testing"
)

// Configs that parse but cannot work are refused, naming the field.
func TestValidationRefusesWhatCannotWork(t *testing.T) {
	peer0 := "address: 192.0.2.12"
	cases := []struct {
		name, field, doc string
	}{
		{"hold time wraps in the OPEN", "holdTime", good + "\nholdTime: 70000s\n"},
		{"peer hold time wraps", "peers[1].holdTime", strings.Replace(good, "holdTime: 30s", "holdTime: 65536s", 1)},
		{"hold time fraction", "peers[1].holdTime", strings.Replace(good, "holdTime: 30s", "holdTime: 30.5s", 1)},
		{"podCIDR loopback", "podCIDRs[0]", strings.Replace(good, "10.244.1.7/24", "127.0.0.0/24", 1)},
		{"podCIDR link-local", "podCIDRs[0]", strings.Replace(good, "10.244.1.7/24", "169.254.0.0/16", 1)},
		{"podCIDR multicast", "podCIDRs[0]", strings.Replace(good, "10.244.1.7/24", "224.0.0.0/24", 1)},
		{"podCIDR class E", "podCIDRs[0]", strings.Replace(good, "10.244.1.7/24", "240.1.0.0/16", 1)},
		{"podCIDR this network", "podCIDRs[0]", strings.Replace(good, "10.244.1.7/24", "0.1.0.0/16", 1)},
		{"podCIDR holds a peer", "peers[1].address", strings.Replace(good, "10.244.1.7/24", "192.0.2.128/25", 1)},
		{"peer unspecified", "peers[0].address", strings.Replace(good, peer0, "address: 0.0.0.0", 1)},
		{"peer broadcast", "peers[0].address", strings.Replace(good, peer0, "address: 255.255.255.255", 1)},
		{"peer loopback", "peers[0].address", strings.Replace(good, peer0, "address: 127.0.0.1", 1)},
		{"peer multicast", "peers[0].address", strings.Replace(good, peer0, "address: 224.0.0.5", 1)},
		{"peer is the node", "peers[0].address", strings.Replace(good, peer0, "address: 192.0.2.11", 1)},
		{"node address multicast", "address", strings.Replace(good, "address: 192.0.2.11", "address: 224.0.0.1", 1)},
		{"grpc port out of range", "grpcListen", good + "\ngrpcListen: 127.0.0.1:70000\n"},
		{"grpc port not a number", "grpcListen", good + "\ngrpcListen: 127.0.0.1:grpc\n"},
		{"grpc port zero", "grpcListen", good + "\ngrpcListen: 127.0.0.1:0\n"},
		{"grpc no port", "grpcListen", good + "\ngrpcListen: 127.0.0.1\n"},
		{"grpc host name", "grpcListen", good + "\ngrpcListen: bgp.example:50051\n"},
		{"metrics port", "metricsListen", good + "\nmetricsListen: \"127.0.0.1:99999\"\n"},
		{"metrics host", "metricsListen", good + "\nmetricsListen: \"300.0.0.1:9091\"\n"},
		{"grpc and metrics collide", "metricsListen", good + "\ngrpcListen: 127.0.0.1:50051\nmetricsListen: 127.0.0.1:50051\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.field+":") {
				t.Errorf("want an error naming %q, got %v", tc.field, err)
			}
		})
	}
}

// What is legitimate stays accepted.
func TestValidationAcceptsUsableEdges(t *testing.T) {
	cases := map[string]string{
		"max hold time":         good + "\nholdTime: 65535s\n",
		"min hold time":         good + "\nholdTime: 3\n",
		"link-local peer":       strings.Replace(good, "address: 192.0.2.254", "address: 169.254.100.1", 1),
		"listen everywhere":     good + "\nmetricsListen: \":9091\"\n",
		"listen on localhost":   good + "\nmetricsListen: localhost:9091\n",
		"listen on IPv6":        good + "\nmetricsListen: \"[::1]:9091\"\n",
		"listeners disabled":    good + "\nmetricsListen: none\ngrpcListen: none\n",
		"podCIDR next to 0/8":   strings.Replace(good, "10.244.1.7/24", "1.0.0.0/24", 1),
		"podCIDR next to 224/4": strings.Replace(good, "10.244.1.7/24", "223.255.255.0/24", 1),
	}
	for name, doc := range cases {
		if _, err := Parse([]byte(doc)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidateListenFlag(t *testing.T) {
	for s, ok := range map[string]bool{
		"": true, "none": true, "127.0.0.1:9099": true, ":9099": true,
		"127.0.0.1:99999": false, "127.0.0.1": false, "nohost:9099": false, "127.0.0.1:-1": false,
	} {
		if err := ValidateListen(s); (err == nil) != ok {
			t.Errorf("ValidateListen(%q) = %v, want ok=%v", s, err, ok)
		}
	}
}
