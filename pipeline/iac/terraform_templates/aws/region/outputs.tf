output "plan_id" {
  description = "Plan this state was last applied from."
  value       = var.plan_id
}

output "window" {
  description = "Validity window provisioned, [valid_from, valid_to) in UTC."
  value       = var.window
}

output "capacity_reservation_ids" {
  description = "EC2 capacity reservation id per on-demand line and zone."
  value       = { for key, reservation in aws_ec2_capacity_reservation.line : key => reservation.id }
}

output "line_ids" {
  description = "Plan line id per line key (carries the window)."
  value       = { for key, line in var.lines : key => line.line_id }
}

output "autoscaling_group_names" {
  description = "Auto scaling group name per line."
  value       = { for key, group in aws_autoscaling_group.line : key => group.name }
}

output "transit_gateway_id" {
  description = "This region's transit gateway (null when the region takes part in no peering)."
  value       = one(aws_ec2_transit_gateway.hub[*].id)
}
