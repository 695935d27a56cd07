//! Scale set: the proxy runner — a persistent listener on GitHub's runner
//! scale-set protocol that delegates each job to the orchestrator.
