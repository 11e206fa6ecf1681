//! Fault tests of real `tandem` processes in Linux network namespaces.
