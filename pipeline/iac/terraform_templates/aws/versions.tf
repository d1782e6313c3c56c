# Static (not templated): checkov cannot parse a terraform {} block written as JSON, and nothing
# here depends on the plan.
terraform {
  required_version = ">= 1.5.0"

  # State lives outside the rendered directory, which every render replaces: the applier runs
  # `init -backend-config=path=<state file>` (build/iac/terraform.tfstate by default).
  backend "local" {}

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
