package parity

// The report's JSON schema (docs/parity.md, "JSON report"). Fields are
// only ever added within one apiVersion; a change of meaning gets a new
// one.
const (
	ReportAPIVersion = "parity.detour.dev/v1"
	ReportKind       = "ParityReport"
)

// Change says how a field differs.
type Change string

const (
	Changed   Change = "changed"    // on both sides, with different values
	OnlyLeft  Change = "only-left"  // on the left side only
	OnlyRight Change = "only-right" // on the right side only
)

// What a report shows in place of a Secret value.
const (
	SecretSet     = "(set)"     // the key is there
	SecretDiffers = "(differs)" // the key is on both sides, its values differ
	Present       = "present"   // an object or list entry is there
)

// Report is what Diff finds.
type Report struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Left       SideInfo `json:"left"`
	Right      SideInfo `json:"right"`
	// FailOn is the lowest severity that fails.
	FailOn      Severity     `json:"failOn"`
	Summary     Summary      `json:"summary"`
	Differences []Difference `json:"differences"`
	// Notes say what could not be compared and why.
	Notes []string `json:"notes"`
}

// SideInfo describes one side.
type SideInfo struct {
	Source    string `json:"source"`
	Namespace string `json:"namespace"`
	Objects   int    `json:"objects"`
}

// Summary counts the differences.
type Summary struct {
	// Total counts every difference found, ignored ones too.
	Total      int `json:"total"`
	Unexpected int `json:"unexpected"`
	Expected   int `json:"expected"`
	Ignored    int `json:"ignored"`
	// Failing counts the unexpected differences at or above FailOn.
	Failing int `json:"failing"`
	// Result is "pass" when Failing is 0, else "drift".
	Result string `json:"result"`
	// ByCategory and BySeverity count the unexpected differences.
	ByCategory map[Category]int `json:"byCategory"`
	BySeverity map[Severity]int `json:"bySeverity"`
}

// Results.
const (
	ResultPass  = "pass"
	ResultDrift = "drift"
)

// Difference is one field (or object, or list entry) that differs.
type Difference struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// RightName is the right side's name when it differs from Name only
	// by the namespace's name (rule namespace-name).
	RightName string `json:"rightName,omitempty"`
	// Path is the field, "" for the object itself.
	Path     string   `json:"path"`
	Category Category `json:"category"`
	Change   Change   `json:"change"`
	Severity Severity `json:"severity"`
	// Left and Right are the values, null where absent. Secret values are
	// SecretSet or SecretDiffers, never the value.
	Left     *string `json:"left"`
	Right    *string `json:"right"`
	Expected bool    `json:"expected"`
	Ignored  bool    `json:"ignored"`
	// Reason is the policy's reason for an expected or ignored one.
	Reason string `json:"reason"`
}

// Object is the difference's object as KIND/NAME.
func (d *Difference) Object() string { return d.Kind + "/" + d.Name }

// Failing says whether d counts against --fail-on.
func (d *Difference) Failing(failOn Severity) bool {
	return !d.Expected && !d.Ignored && failOn != SeverityNone && d.Severity.AtLeast(failOn)
}

// Drift says whether the report fails its gate.
func (r *Report) Drift() bool { return r.Summary.Failing > 0 }
