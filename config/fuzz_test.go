package config

import (
	"fmt"
	"reflect"
	"regexp"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzParse feeds arbitrary bytes to Parse, the daemon's one entry point
// for a config file. Parse must never panic, and whatever it accepts
//
//   - validates (Parse does not skip a check),
//   - survives a round trip: marshalled back to YAML (as the e2e harness and
//     any tool writing node.yaml do) and parsed again, it is the same config,
//     so Normalize is idempotent and no field is lost or changed in writing;
//   - marshals the same way the second time (the written form is stable).
//
// Seeds are in testdata/fuzz/FuzzParse; `go test` runs them, hack/fuzz.sh
// (`make fuzz`) explores from them.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("peers: [{address: 1.2.3.4, holdTime: -1}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal an accepted config: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("an accepted config, written back as YAML, is refused: %v\nwritten:\n%s", err, out)
		}
		if diff := configDiff(c, c2); diff != "" {
			t.Fatalf("round trip through YAML changed the config: %s\nwritten:\n%s", diff, out)
		}
		out2, err := yaml.Marshal(c2)
		if err != nil {
			t.Fatalf("marshal the re-parsed config: %v", err)
		}
		if string(out) != string(out2) {
			t.Fatalf("written form not stable:\nfirst:\n%s\nsecond:\n%s", out, out2)
		}
	})
}

// FuzzParseScalars writes one plain token, unquoted as people write YAML,
// as a node name, a peer's password and its description, and requires
// Parse to keep it exactly or refuse the file. YAML 1.1 reads some plain
// tokens as numbers or booleans; a config that silently turns the MD5
// password 0123 into "83" (octal) or 1e3 into "1000" leaves the session
// failing authentication for a reason nobody can see in the file.
//
// Seeds are in testdata/fuzz/FuzzParseScalars.
func FuzzParseScalars(f *testing.F) {
	f.Add("s3cret")
	f.Fuzz(func(t *testing.T, s string) {
		if !plainToken.MatchString(s) || len(s) > 80 || yamlNull[s] {
			return
		}
		doc := fmt.Sprintf("nodeName: %s\naddress: 192.0.2.11\nlocalAS: 64512\npodCIDR: 10.244.1.0/24\n"+
			"peers:\n- address: 192.0.2.12\n  as: 64512\n  password: %s\n  description: %s\n", s, s, s)
		c, err := Parse([]byte(doc))
		if err != nil {
			return
		}
		p := c.Peers[0]
		if c.NodeName != s || p.Password != s || p.Description != s {
			t.Fatalf("plain %q read as nodeName %q, password %q, description %q: want it kept as written, or the file refused",
				s, c.NodeName, p.Password, p.Description)
		}
	})
}

// plainToken is a YAML plain scalar with no indicator or space in it.
var plainToken = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

// yamlNull are the spellings of null: an empty value, not a mangled one.
var yamlNull = map[string]bool{"null": true, "Null": true, "NULL": true}

// configDiff compares two configs field by field (pointers followed), an
// empty list and a missing one counting as equal: `omitempty` writes
// neither. It returns the first difference, or "".
func configDiff(a, b *Config) string {
	return valueDiff("config", reflect.ValueOf(*a), reflect.ValueOf(*b))
}

func valueDiff(path string, a, b reflect.Value) string {
	switch a.Kind() {
	case reflect.Struct:
		// netip types and time.Duration compare as values; the rest field
		// by field so the message names the field.
		if !hasExported(a.Type()) {
			if !reflect.DeepEqual(a.Interface(), b.Interface()) {
				return fmt.Sprintf("%s: %v became %v", path, a.Interface(), b.Interface())
			}
			return ""
		}
		for i := range a.NumField() {
			f := a.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			if d := valueDiff(path+"."+f.Name, a.Field(i), b.Field(i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Slice:
		if a.Len() != b.Len() {
			return fmt.Sprintf("%s: %d elements became %d", path, a.Len(), b.Len())
		}
		for i := range a.Len() {
			if d := valueDiff(fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Pointer:
		switch {
		case a.IsNil() && b.IsNil():
			return ""
		case a.IsNil() || b.IsNil():
			return fmt.Sprintf("%s: %s became %s", path, ptrString(a), ptrString(b))
		}
		return valueDiff(path, a.Elem(), b.Elem())
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		return fmt.Sprintf("%s: %#v became %#v", path, a.Interface(), b.Interface())
	}
	return ""
}

func hasExported(t reflect.Type) bool {
	for i := range t.NumField() {
		if t.Field(i).IsExported() {
			return true
		}
	}
	return false
}

func ptrString(v reflect.Value) string {
	if v.IsNil() {
		return "unset"
	}
	return fmt.Sprintf("%v", v.Elem().Interface())
}
