# Plan values (set by plan.auto.tfvars.json, generated per plan and region).

variable "plan_id" {
  description = "Plan this region's configuration comes from (tags every resource)."
  type        = string
}

variable "region" {
  description = "AWS region of this root."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "region looks like us-east-1."
  }
}

variable "window" {
  description = "The plan's first window [valid_from, valid_to) in UTC (RFC 3339): the one provisioned now."
  type = object({
    valid_from = string
    valid_to   = string
  })
}

variable "lines" {
  description = "Plan lines of this region with at least one instance, keyed by instance_type/purchase_option (stable across plans)."
  type = map(object({
    line_id            = string
    line_key           = string
    instance_type      = string
    purchase_option    = string
    count              = number
    planned_count      = number
    zone_headroom      = number
    warm_pool          = number
    max_size           = number
    storage_gib        = number
    availability_zones = list(string)
    zone_counts        = map(number)
  }))

  validation {
    condition     = alltrue([for line in values(var.lines) : contains(["on_demand", "spot"], line.purchase_option) && line.count > 0 && line.warm_pool >= 0 && line.max_size >= line.count + line.warm_pool && line.count == line.planned_count + line.zone_headroom && sum(concat([0], values(line.zone_counts))) == line.count])
    error_message = "Each line is on_demand or spot with a positive count (planned_count + zone_headroom, the sum of zone_counts), a non-negative warm pool and max_size >= count + warm_pool."
  }
}

variable "transit_gateway" {
  description = "Create this region's transit gateway (the region takes part in a planned peering)."
  type        = bool
  default     = false
}

# Operator settings (pass with -var-file or TF_VAR_*; never in the plan's tfvars).

variable "capacity_reservations" {
  description = "Reserve on-demand capacity with EC2 capacity reservations (false where the API lacks them, e.g. moto)."
  type        = bool
  default     = true
}

variable "subnet_ids" {
  description = "Subnets for the auto scaling groups; empty uses the default VPC in each line's availability zones."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "Subnet ids look like subnet-0123456789abcdef0."
  }
}

variable "image_id" {
  description = "AMI for the launch templates; null reads ami_ssm_parameter."
  type        = string
  default     = null

  validation {
    condition     = var.image_id == null || can(regex("^ami-[0-9a-f]+$", var.image_id))
    error_message = "AMI ids look like ami-0123456789abcdef0."
  }
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter naming the AMI (x86_64; use an arm64 parameter or image_id for Graviton types)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "warm_pool_state" {
  description = "State of warm-pool instances next to on-demand groups: Stopped (pay for volumes only), Running or Hibernated."
  type        = string
  default     = "Stopped"

  validation {
    condition     = contains(["Stopped", "Running", "Hibernated"], var.warm_pool_state)
    error_message = "warm_pool_state is one of Stopped, Running, Hibernated."
  }
}

variable "endpoints" {
  description = "AWS API endpoint overrides by service (autoscaling, ec2, ssm, sts); empty for AWS itself."
  type        = map(string)
  default     = {}
}
