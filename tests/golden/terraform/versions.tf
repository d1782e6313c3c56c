# Static (not templated): checkov cannot parse a terraform {} block written as JSON, and nothing
# here depends on the plan.
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
