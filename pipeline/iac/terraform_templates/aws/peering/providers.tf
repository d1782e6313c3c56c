# The two regions of one planned pair: the requester (alphabetically first) and the accepter.
provider "aws" {
  alias  = "requester"
  region = var.requester_region

  skip_credentials_validation = length(var.endpoints) > 0
  skip_requesting_account_id  = length(var.endpoints) > 0
  skip_metadata_api_check     = length(var.endpoints) > 0

  endpoints {
    ec2 = lookup(var.endpoints, "ec2", null)
    sts = lookup(var.endpoints, "sts", null)
  }
}

provider "aws" {
  alias  = "accepter"
  region = var.accepter_region

  skip_credentials_validation = length(var.endpoints) > 0
  skip_requesting_account_id  = length(var.endpoints) > 0
  skip_metadata_api_check     = length(var.endpoints) > 0

  endpoints {
    ec2 = lookup(var.endpoints, "ec2", null)
    sts = lookup(var.endpoints, "sts", null)
  }
}
