fn main() {
    // On macOS an extension module leaves Python's symbols to be found at load time.
    pyo3_build_config::add_extension_module_link_args();
}
