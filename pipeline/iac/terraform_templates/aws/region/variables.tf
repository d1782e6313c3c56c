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
  description = "The span provisioned now, [valid_from, valid_to) in UTC (RFC 3339): the plan's windows up to the next hourly run (its first window for an hourly plan)."
  type = object({
    valid_from = string
    valid_to   = string
  })
}

variable "lines" {
  description = "Plan lines of this region with at least one instance in some window of the span, keyed by instance_type/purchase_option (stable across plans). count, planned_count, zone_headroom and zone_counts are the span's first window (0 for a line with instances only later); max_size covers the span's largest window; schedule lists each later window whose size differs from the one before (start_time RFC 3339 UTC, increasing; desired_capacity instances); reserved_zone_counts (on-demand lines) is the span's per-zone minimum, what capacity reservations hold (absent: zone_counts). Hourly plans carry neither."
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
    schedule = optional(list(object({
      start_time       = string
      desired_capacity = number
    })), [])
    reserved_zone_counts = optional(map(number))
  }))

  validation {
    condition     = alltrue([for line in values(var.lines) : contains(["on_demand", "spot"], line.purchase_option) && line.count >= 0 && line.warm_pool >= 0 && line.max_size >= line.count + line.warm_pool && line.count == line.planned_count + line.zone_headroom && sum(concat([0], values(line.zone_counts))) == line.count])
    error_message = "Each line is on_demand or spot with a non-negative count (planned_count + zone_headroom, the sum of zone_counts), a non-negative warm pool and max_size >= count + warm_pool."
  }

  validation {
    condition     = alltrue(flatten([for line in values(var.lines) : concat([for step in line.schedule : can(regex("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$", step.start_time)) && step.desired_capacity >= 0 && floor(step.desired_capacity) == step.desired_capacity && step.desired_capacity + line.warm_pool <= line.max_size], [for i in range(1, max(1, length(line.schedule))) : timecmp(line.schedule[i - 1].start_time, line.schedule[i].start_time) < 0], [for n in values(line.reserved_zone_counts != null ? line.reserved_zone_counts : {}) : n >= 0 && floor(n) == n])]))
    error_message = "Each schedule step starts at an RFC 3339 UTC time (like 2025-03-01T00:15:00Z) after the step before, with a whole desired_capacity >= 0 that fits max_size with the warm pool; reserved_zone_counts are whole numbers >= 0."
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
