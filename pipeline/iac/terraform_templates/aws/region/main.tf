# Per line (instance_type/purchase_option with instances in some window of the provisioned span:
# the windows up to the next hourly run, one window for an hourly plan):
# - on-demand: a capacity reservation per availability zone (billed used or not, so it holds the
#   span's minimum and ends with the span), a launch template and an auto scaling group with a
#   warm pool;
# - spot: a launch template and an all-spot auto scaling group (AWS refuses warm pools there);
# - sub-hour plans: a scheduled action per later window whose size differs from the one before.
# Lines are keyed by instance_type/purchase_option, so the next plan updates them in place.

locals {
  on_demand = { for key, line in var.lines : key => line if line.purchase_option == "on_demand" }

  # What every window of the span runs per on-demand line and zone: the span's per-zone minimum
  # (reserved_zone_counts; absent when that is the first window's zone_counts). A reservation is
  # billed used or not, so it holds this floor; scheduled windows above it run unreserved.
  reserved_zone_counts = { for key, line in local.on_demand : key => coalesce(line.reserved_zone_counts, line.zone_counts) }

  # One reservation per on-demand line and zone with a share of that floor.
  reservations = var.capacity_reservations ? merge([
    for key, line in local.on_demand : {
      for zone, count in local.reserved_zone_counts[key] : "${key}/${zone}" => {
        line  = key
        zone  = zone
        count = count
      } if count > 0
    }
  ]...) : {}

  # One scheduled action per line and later window of the span whose size differs from the window
  # before (sub-hour plans only), keyed by line and start time.
  window_steps = merge([
    for key, line in var.lines : {
      for step in line.schedule : "${key}/${step.start_time}" => {
        line             = key
        start_time       = step.start_time
        desired_capacity = step.desired_capacity
      }
    }
  ]...)

  image_id = var.image_id != null ? var.image_id : one(data.aws_ssm_parameter.ami[*].insecure_value)

  # Only tags that stay the same from plan to plan: a new plan then changes exactly its diff.
  # Which plan (and line id) provisioned a line is in the outputs and the plan's manifest.
  line_tags = {
    for key, line in var.lines : key => {
      line_key        = line.line_key
      purchase_option = line.purchase_option
      peerscale       = "true"
    }
  }
}

# A public, non-secret parameter: insecure_value keeps the AMI id readable in plans.
data "aws_ssm_parameter" "ami" {
  count = var.image_id == null && length(var.lines) > 0 ? 1 : 0
  name  = var.ami_ssm_parameter
}

resource "aws_ec2_capacity_reservation" "line" {
  for_each = local.reservations

  instance_type           = var.lines[each.value.line].instance_type
  instance_platform       = "Linux/UNIX"
  availability_zone       = each.value.zone
  instance_count          = each.value.count
  instance_match_criteria = "open"
  end_date_type           = "limited"
  end_date                = var.window.valid_to

  tags = local.line_tags[each.value.line]
}

resource "aws_launch_template" "line" {
  for_each = var.lines

  name_prefix            = "peerscale-${replace(each.key, "/[^A-Za-z0-9-]/", "-")}-"
  image_id               = local.image_id
  instance_type          = each.value.instance_type
  update_default_version = true
  ebs_optimized          = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  monitoring {
    enabled = true
  }

  # Storage the plan reserves on the line, per instance, as an encrypted gp3 data volume.
  dynamic "block_device_mappings" {
    for_each = each.value.storage_gib > 0 ? [each.value.storage_gib] : []
    content {
      device_name = "/dev/sdf"

      ebs {
        volume_size           = block_device_mappings.value
        volume_type           = "gp3"
        encrypted             = true
        delete_on_termination = true
      }
    }
  }

  dynamic "capacity_reservation_specification" {
    for_each = each.value.purchase_option == "on_demand" ? ["open"] : []
    content {
      capacity_reservation_preference = capacity_reservation_specification.value
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = local.line_tags[each.key]
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.line_tags[each.key]
  }

  tags = local.line_tags[each.key]

  # The tags above never change for a line; moto (not AWS) echoes the template's own tags back as
  # a "launch-template" tag specification, which would show as drift on every plan.
  lifecycle {
    ignore_changes = [tag_specifications]
  }
}

resource "aws_autoscaling_group" "line" {
  for_each = var.lines

  name_prefix = "peerscale-${replace(each.key, "/[^A-Za-z0-9-]/", "-")}-"
  min_size    = 0
  # count is the first window's per-zone instances (N+1 across zones included: losing one zone
  # leaves the planned capacity; 0 for a line with instances only in later windows); max_size
  # covers the span's largest window plus room for the warm pool (and, under the deprecated
  # PEERSCALE_AZ_PER_REGION spread, for relaunching the largest zone's share in the others).
  max_size         = each.value.max_size
  desired_capacity = each.value.count
  # Spot capacity may arrive late: the group keeps trying and the apply does not fail meanwhile.
  wait_for_capacity_timeout = "0"
  capacity_rebalance        = each.value.purchase_option == "spot"

  # Subnets when given; otherwise the default VPC in the line's zones (AWS balances across them).
  vpc_zone_identifier = length(var.subnet_ids) > 0 ? var.subnet_ids : null
  availability_zones  = length(var.subnet_ids) > 0 ? null : each.value.availability_zones

  dynamic "launch_template" {
    for_each = each.value.purchase_option == "on_demand" ? [aws_launch_template.line[each.key]] : []
    content {
      id      = launch_template.value.id
      version = launch_template.value.latest_version
    }
  }

  # AWS has no scheduled action for a warm pool's size: it holds the span's largest warm pool.
  dynamic "warm_pool" {
    for_each = each.value.purchase_option == "on_demand" && each.value.warm_pool > 0 ? [each.value.warm_pool] : []
    content {
      pool_state                  = var.warm_pool_state
      min_size                    = warm_pool.value
      max_group_prepared_capacity = each.value.max_size

      instance_reuse_policy {
        reuse_on_scale_in = true
      }
    }
  }

  # All spot: no on-demand base, 0 % on demand above it.
  dynamic "mixed_instances_policy" {
    for_each = each.value.purchase_option == "spot" ? [aws_launch_template.line[each.key]] : []
    content {
      instances_distribution {
        on_demand_base_capacity                  = 0
        on_demand_percentage_above_base_capacity = 0
        spot_allocation_strategy                 = "price-capacity-optimized"
      }

      launch_template {
        launch_template_specification {
          launch_template_id = mixed_instances_policy.value.id
          version            = mixed_instances_policy.value.latest_version
        }

        override {
          instance_type = each.value.instance_type
        }
      }
    }
  }

  dynamic "tag" {
    for_each = local.line_tags[each.key]
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  depends_on = [aws_ec2_capacity_reservation.line]
}

# Sub-hour plans: at each later window's start the group runs that window's instances (min_size =
# desired: nothing scales it below the plan; max_size stays the group's, room for the warm pool).
resource "aws_autoscaling_schedule" "window" {
  for_each = local.window_steps

  scheduled_action_name  = "peerscale-window-${replace(each.key, "/[^A-Za-z0-9-]/", "-")}"
  autoscaling_group_name = aws_autoscaling_group.line[each.value.line].name
  min_size               = each.value.desired_capacity
  max_size               = var.lines[each.value.line].max_size
  desired_capacity       = each.value.desired_capacity
  start_time             = each.value.start_time
}

# Like a capacity reservation's end_date: release the line's instances when the span ends.
resource "aws_autoscaling_schedule" "window_end" {
  for_each = var.lines

  scheduled_action_name  = "peerscale-window-end-${replace(each.key, "/[^A-Za-z0-9-]/", "-")}"
  autoscaling_group_name = aws_autoscaling_group.line[each.key].name
  min_size               = 0
  max_size               = 0
  desired_capacity       = 0
  start_time             = var.window.valid_to
}
