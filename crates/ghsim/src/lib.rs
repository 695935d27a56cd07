//! ghsim: a GitHub simulator for berth's tests and `berth demo`.
