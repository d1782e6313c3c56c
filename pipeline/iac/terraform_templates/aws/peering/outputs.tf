output "peering_attachment_id" {
  description = "Transit gateway peering attachment id of the pair."
  value       = aws_ec2_transit_gateway_peering_attachment.pair.id
}
