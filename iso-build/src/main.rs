//! `tandem-iso`: builds the installable hybrid ISO image.

fn main() {}
