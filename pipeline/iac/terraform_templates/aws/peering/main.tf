# One transit gateway peering attachment between the two regions' hubs, requested by the
# requester region and accepted by the accepter region.
locals {
  tags = {
    Name      = "peerscale-${var.requester_region}-${var.accepter_region}"
    pair      = "${var.requester_region}|${var.accepter_region}"
    peerscale = "true"
  }
}

resource "aws_ec2_transit_gateway_peering_attachment" "pair" {
  provider = aws.requester

  transit_gateway_id      = var.requester_transit_gateway_id
  peer_transit_gateway_id = var.accepter_transit_gateway_id
  peer_region             = var.accepter_region

  tags = local.tags
}

resource "aws_ec2_transit_gateway_peering_attachment_accepter" "pair" {
  provider = aws.accepter

  transit_gateway_attachment_id = aws_ec2_transit_gateway_peering_attachment.pair.id

  tags = local.tags
}
