"""Fleet provisioning for capture-agent Pis: see provisioning/README.md."""
