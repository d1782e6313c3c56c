# One region per root: credentials come from the environment (AWS_PROFILE, AWS_ACCESS_KEY_ID,
# SSO or an instance role), never from this directory. var.endpoints points the provider at
# another AWS API (moto in tests); empty means the real AWS endpoints.
provider "aws" {
  region = var.region

  skip_credentials_validation = length(var.endpoints) > 0
  skip_requesting_account_id  = length(var.endpoints) > 0
  skip_metadata_api_check     = length(var.endpoints) > 0

  endpoints {
    autoscaling = lookup(var.endpoints, "autoscaling", null)
    ec2         = lookup(var.endpoints, "ec2", null)
    ssm         = lookup(var.endpoints, "ssm", null)
    sts         = lookup(var.endpoints, "sts", null)
  }

  default_tags {
    tags = {
      peerscale = "true"
    }
  }
}
