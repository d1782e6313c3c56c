# Fixed module: nothing here changes per plan. The plan arrives as plan.auto.tfvars.json.
terraform {
  required_version = ">= 1.5.0"

  # State lives outside the rendered directory, which every render replaces: the applier runs
  # `init -backend-config=path=<state file>` for the local backend, or writes an S3 backend
  # override (backend_override.tf.json) with bucket, key and locking from the settings.
  backend "local" {}

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
