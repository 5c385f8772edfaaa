"""The contract between the core and its plugins: hook specs, the types that cross module
borders, announcing a backend, scenarios and case kinds."""
