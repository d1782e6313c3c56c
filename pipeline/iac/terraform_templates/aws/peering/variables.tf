variable "plan_id" {
  description = "Plan that asked for this peering."
  type        = string
}

variable "requester_region" {
  description = "The pair's alphabetically first region; it requests the attachment."
  type        = string
}

variable "accepter_region" {
  description = "The pair's other region; it accepts the attachment."
  type        = string
}

variable "requester_transit_gateway_id" {
  description = "Transit gateway of the requester region (output of its region root)."
  type        = string
}

variable "accepter_transit_gateway_id" {
  description = "Transit gateway of the accepter region (output of its region root)."
  type        = string
}

variable "expected_requests" {
  description = "Requests the pair forecast expects between the two regions over the plan (null: no forecast)."
  type        = number
  default     = null
}

variable "endpoints" {
  description = "AWS API endpoint overrides by service (ec2, sts); empty for AWS itself."
  type        = map(string)
  default     = {}
}
