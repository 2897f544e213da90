package uki

import (
	"io"

	"github.com/basalt-os/basalt/images/measure"
)

// Section is one named PE section of a unified kernel image (measure.Section).
type Section = measure.Section

// ReadSections returns every section of a PE image in section-table order,
// each with its in-memory content (measure.ReadSections).
func ReadSections(r io.ReaderAt) ([]Section, error) {
	return measure.ReadSections(r)
}
