// Package images is the contract between the builder and the on-device updater: what an image is.
//
// It holds the image-config schema (the YAML a CI pipeline writes), the manifest schema (the JSON that
// describes one built version and rides in its TUF target), version and compatibility rules, and the
// disk-layout constants both sides agree on. It does no I/O beyond decoding the files it is given.
package images
