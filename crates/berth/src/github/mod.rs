//! GitHub: the App client (JWT → installation token), JIT runner configs,
//! runner registrations and job lookups.
